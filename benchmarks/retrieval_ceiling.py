"""What the retrieved demos alone know: a majority vote of the BM25-nearest train examples' labels, no LM.

The prompt search's per-input demos are the ``k`` train examples nearest to the input by BM25
(:class:`autoprompt._retrieval.Retriever`, the same index, tokens and tie rule). This benchmark scores
the vote of those neighbours' labels (ties: the nearest neighbour's label among the tied ones) on the
rows the optimizers benchmark uses (``benchmarks/optimizers.py``: the same seeded, label-stratified dev
and test samples), with a 95% bootstrap interval on test; the ``k`` that ``autoprompt decide`` would choose
for its no-LM reference (the best dev score, ties to the smaller) is marked. It is the reference a prompted program with
retrieved demos has to beat to show that the LM adds anything to its neighbours. A second table sets every
cell of the optimizers benchmark (its per-row test scores, ``benchmarks/results/optimizers/``) against that
vote on the same rows: which rows each gets right. A third table tries other neighbour rules (the
neighbours' scores as weights, bigrams, negation-scoped words, up to 64 neighbours) on SST-2 and Banking77:
whether another lexical similarity would give the demos a better vote to copy. No LM call, a minute:

    .venv/bin/python benchmarks/retrieval_ceiling.py

Writes ``benchmarks/results/retrieval_ceiling.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import autoprompt  # noqa: E402
from autoprompt._retrieval import BM25, choose_k, field_tokens, neighbour_votes, tokenize, vote  # noqa: E402
from autoprompt.decision._measure import NEIGHBOUR_KS  # noqa: E402
from autoprompt.decision._stats import bootstrap_ci, paired_test  # noqa: E402
from _common import code_version, write_markdown  # noqa: E402

RESULTS = HERE / "results"
#: the optimizers benchmark's rows (benchmarks/optimizers.py SETTINGS); iris: whole splits
LIMITS = {
    "sentiment": {"dev": 200, "test": None},
    "banking77": {"dev": 154, "test": 231},
    "iris": {"dev": None, "test": None},
}
KS = NEIGHBOUR_KS
#: the neighbour counts the other rules (third table) try
RULE_KS = (4, 8, 16, 32, 64)
#: words after which, up to the next punctuation, a word is marked negated (the negation-scope rule)
NEGATORS = {"not", "no", "never", "nothing", "neither", "nor", "without", "hardly", "barely", "t"}


def negated(text: str) -> list[str]:
    """Lower-cased words, those between a negator and the next punctuation prefixed ``not_`` (the classic
    sentiment-lexicon trick: "not good" then shares no token with "good").

    Example:
        >>> negated("Not good, but fun")
        ['not', 'not_good', 'but', 'fun']
    """
    out, scope = [], False
    for word in re.findall(r"[a-z0-9']+|[.,!?;:]", str(text).lower()):
        if word in ".,!?;:":
            scope = False
            continue
        out.append("not_" + word if scope else word)
        scope = scope or word in NEGATORS or word.endswith("n't")
    return out


def bigrams(tokens: list[str]) -> list[str]:
    """``tokens`` and each pair of neighbouring tokens (``a_b``)."""
    return tokens + [f"{a}_{b}" for a, b in zip(tokens, tokens[1:])]


#: other neighbour rules, each: (tokenizer of the joined input fields or None for the search's field tokens,
#: weighted vote); the first is the search's rule, the others change one thing
RULES = {
    "BM25, count vote (the search's rule)": (None, False),
    "BM25, score-weighted vote": (None, True),
    "BM25 over words and bigrams, count vote": (lambda text: bigrams(tokenize(text)), False),
    "BM25 over negation-scoped words, count vote": (negated, False),
}


def other_rules(task: autoprompt.Task, limits: dict) -> list[dict]:
    """Per rule of :data:`RULES` and ``k`` of :data:`RULE_KS`: dev and test accuracy of the neighbours' vote,
    the ``k`` chosen on dev (:func:`choose_k`) and its test interval. Whether another lexical similarity, or
    more neighbours, would give the search's demos a better vote to copy."""
    pool = [dict(ex) for ex in task.examples("train")]
    fields, label = task.input_fields, task.label_field
    labels = [str(ex[label]) for ex in pool]
    splits = {split: list(task.examples(split, limit=limits[split])) for split in ("dev", "test")}
    out = []
    for rule, (tokens, weighted) in RULES.items():
        def tokenized(values: dict) -> list[str]:
            if tokens is None:
                return field_tokens(values, fields)
            return tokens(" ".join(str(values.get(f, "")) for f in fields))

        index = BM25([tokenized(ex) for ex in pool])
        scores: dict[str, dict[int, list[float]]] = {}
        for split, examples in splits.items():
            scores[split] = {k: [] for k in RULE_KS}
            for ex in examples:
                key = tuple(str(ex[f]) for f in fields)
                s = index.scores(tokenized(ex))
                near = [int(i) for i in np.argsort(-s, kind="stable")[:max(RULE_KS) + 8]
                        if tuple(str(pool[i][f]) for f in fields) != key][:max(RULE_KS)]  # nearest first
                for k in RULE_KS:
                    if weighted:
                        mass: Counter = Counter()
                        for i in near[:k]:
                            mass[labels[i]] += float(s[i])
                        answer = max(mass, key=mass.__getitem__)  # ties: the label of the nearer demo
                    else:
                        answer = vote([labels[i] for i in reversed(near[:k])])
                    scores[split][k].append(float(answer == str(ex[label])))
        dev = {k: sum(v) / len(v) for k, v in scores["dev"].items()}
        chosen = choose_k(dev)
        low, high = bootstrap_ci(scores["test"][chosen], seed=0)
        out.append({"rule": rule, "dev": dev, "test": {k: sum(v) / len(v) for k, v in scores["test"].items()},
                    "chosen": chosen, "test_interval": [low, high]})
    return out


def score(task: autoprompt.Task, split: str, limit: int | None) -> dict[int, list[float]]:
    """Per ``k`` of :data:`KS`, per example of the split's sample: 1.0 when the vote of its ``k`` nearest train
    examples is its label (:func:`autoprompt._retrieval.neighbour_votes`, the helper decide's reference uses)."""
    pool = [dict(ex) for ex in task.examples("train")]
    examples = list(task.examples(split, limit=limit))
    votes = neighbour_votes(pool, task.input_fields, task.label_field, examples, KS)
    gold = [str(ex[task.label_field]) for ex in examples]
    return {k: [float(v[k] == g) for v, g in zip(votes, gold)] for k in KS}


def programs_against_vote(name: str, vote_scores: list[float], k: int) -> list[dict]:
    """Every cell of the optimizers benchmark on ``name``'s test rows (its ``test_scores``, in the rows' order)
    set against the ``k``-vote on the same rows: both right, only one of them, neither, and the exact McNemar
    test (:func:`autoprompt.decision._stats.paired_test`)."""
    out = []
    for path in sorted((RESULTS / "optimizers" / name).glob("c*/*/s*.json")):
        cell = json.loads(path.read_text())
        scores = cell.get("test_scores") or []
        if cell["settings"].get("test_limit") != LIMITS[name]["test"] or len(scores) != len(vote_scores):
            continue  # other rows than the vote's: nothing to pair
        test = paired_test(scores, vote_scores)
        both = sum(1 for a, b in zip(scores, vote_scores) if a and b)
        out.append({"cell": str(path.relative_to(RESULTS)), "side": path.parent.name, "calls": cell["calls"],
                    "seed": cell["seed"], "code": cell["code"], "test": sum(scores) / len(scores), "k": k,
                    "vote": sum(vote_scores) / len(vote_scores), "both": both, "program_only": test["a_only"],
                    "vote_only": test["b_only"], "neither": len(scores) - both - test["a_only"] - test["b_only"],
                    "p_value": test["p_value"]})
    return sorted(out, key=lambda c: (c["calls"], -c["test"], c["side"], c["seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(LIMITS), default=sorted(LIMITS))
    args = parser.parse_args()
    cells: dict[str, dict] = {}
    programs: dict[str, list[dict]] = {}
    rows = []
    tasks: dict[str, autoprompt.Task] = {}
    for name in args.tasks:
        task = tasks[name] = autoprompt.load_task(str(ROOT / "tasks" / f"{name}.py"))
        n_train = len(task.examples("train"))
        first = len(rows)
        devs = score(task, "dev", LIMITS[name]["dev"])
        tests = score(task, "test", LIMITS[name]["test"])
        for k in KS:
            dev, test = devs[k], tests[k]
            low, high = bootstrap_ci(test, seed=0)
            cells[f"{name}/k{k}"] = {"task": name, "k": k, "train": n_train, "dev_n": len(dev), "test_n": len(test),
                                     "dev": sum(dev) / len(dev), "test": sum(test) / len(test),
                                     "test_interval": [low, high]}
            c = cells[f"{name}/k{k}"]
            rows.append([name, str(k), str(n_train), f"{100 * c['dev']:.1f} ({c['dev_n']})",
                         f"{100 * c['test']:.1f} [{100 * low:.1f}, {100 * high:.1f}] ({c['test_n']})"])
        chosen = choose_k({k: cells[f"{name}/k{k}"]["dev"] for k in KS})  # decide's reference's rule
        rows[first + KS.index(chosen)][1] += " (chosen on dev)"
        programs[name] = programs_against_vote(name, tests[chosen], chosen)
    version = code_version()
    notes = (f"Code {version}. The label most frequent among the k BM25-nearest train examples (the search's "
             "per-input demo retrieval: same index, tokens and ties; an example whose inputs equal the row's is "
             "skipped), scored on the optimizers benchmark's rows (seeded, label-stratified samples; iris whole "
             "splits). Test: mean with a 95% percentile-bootstrap interval; rows in brackets. No LM call.")
    text = write_markdown(RESULTS / "retrieval_ceiling.md", "Retrieved demos alone: the neighbours' vote",
                          notes, ["task", "k", "train rows", "dev % (rows)", "test % [95% CI] (rows)"], rows)
    lines = ["", "## The optimized programs against the vote", "",
             "Each cell of `benchmarks/optimizers.py` (`benchmarks/results/optimizers/`: its per-row test scores) "
             "against the vote of the k chosen above, on the same test rows: rows both get right, rows only one of "
             "them gets right, rows neither does; p: exact McNemar test. A program that copies its demos' "
             "majority gets right what the vote gets right: few rows in the middle columns.", "",
             "| task | cell (side, calls, seed) | code | program test % | vote test % (k) | both | program only | "
             "vote only | neither | p |", "|" + "---|" * 10]
    for name, found in programs.items():
        lines += [f"| {name} | {c['side']}, {c['calls']}, s{c['seed']} | {c['code']} | {100 * c['test']:.1f} | "
                  f"{100 * c['vote']:.1f} ({c['k']}) | {c['both']} | {c['program_only']} | {c['vote_only']} | "
                  f"{c['neither']} | {c['p_value']:.2g} |" for c in found]
    rules = {name: other_rules(task, LIMITS[name]) for name, task in tasks.items() if name != "iris"}
    lines += ["", "## Other neighbour rules", "",
              "The vote with one thing changed: the neighbours' BM25 scores as weights, bigrams as tokens, words "
              "after a negator marked (`not good` -> `not`, `not_good`), and more neighbours (up to 64). Dev % "
              "and test % per k; the k chosen on dev (the same rule) in bold, with its test interval. Whether "
              "another lexical similarity would give the search's demos a better vote to copy.", "",
              "| task | rule | " + " | ".join(f"k = {k}: dev / test %" for k in RULE_KS) + " | chosen k: test % [95% CI] |",
              "|" + "---|" * (len(RULE_KS) + 3)]
    for name, found in rules.items():
        for r in found:
            marks = [f"**{100 * r['dev'][k]:.1f} / {100 * r['test'][k]:.1f}**" if k == r["chosen"] else
                     f"{100 * r['dev'][k]:.1f} / {100 * r['test'][k]:.1f}" for k in RULE_KS]
            low, high = r["test_interval"]
            lines.append(f"| {name} | {r['rule']} | " + " | ".join(marks) +
                         f" | {r['chosen']}: {100 * r['test'][r['chosen']]:.1f} [{100 * low:.1f}, {100 * high:.1f}] |")
    with (RESULTS / "retrieval_ceiling.md").open("a") as f:
        f.write("\n".join(lines) + "\n")
    text += "\n".join(lines) + "\n"
    (RESULTS / "retrieval_ceiling.json").write_text(json.dumps({"code": version, "cells": cells,
                                                                "programs": programs, "other_rules": rules},
                                                               indent=1, sort_keys=True) + "\n")
    print(text)


if __name__ == "__main__":
    main()
