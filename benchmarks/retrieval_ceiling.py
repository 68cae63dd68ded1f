"""What the retrieved demos alone know: a majority vote of the BM25-nearest train examples' labels, no LM.

The prompt search's per-input demos are the ``k`` train examples nearest to the input by BM25
(:class:`autoprompt._retrieval.Retriever`, the same index, tokens and tie rule). This benchmark scores
the vote of those neighbours' labels (ties: the nearest neighbour's label among the tied ones) on the
rows the optimizers benchmark uses (``benchmarks/optimizers.py``: the same seeded, label-stratified dev
and test samples), with a 95% bootstrap interval on test; the ``k`` that ``autoprompt decide`` would choose
for its no-LM reference (the best dev score, ties to the smaller) is marked. It is the reference a prompted program with
retrieved demos has to beat to show that the LM adds anything to its neighbours. A second table sets every
cell of the optimizers benchmark (its per-row test scores, ``benchmarks/results/optimizers/``) against that
vote on the same rows: which rows each gets right. No LM call, a few seconds per task:

    .venv/bin/python benchmarks/retrieval_ceiling.py

Writes ``benchmarks/results/retrieval_ceiling.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import autoprompt  # noqa: E402
from autoprompt._retrieval import choose_k, neighbour_votes  # noqa: E402
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
    for name in args.tasks:
        task = autoprompt.load_task(str(ROOT / "tasks" / f"{name}.py"))
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
    with (RESULTS / "retrieval_ceiling.md").open("a") as f:
        f.write("\n".join(lines) + "\n")
    text += "\n".join(lines) + "\n"
    (RESULTS / "retrieval_ceiling.json").write_text(json.dumps({"code": version, "cells": cells,
                                                                "programs": programs}, indent=1,
                                                               sort_keys=True) + "\n")
    print(text)


if __name__ == "__main__":
    main()
