"""Does the LM add to its neighbours' vote? The LM's label probabilities combined with the vote, on SST-2.

The prompt search's best SST-2 program (8 retrieved demos ordered by vote) scores what the vote of those
neighbours' labels scores (``retrieval_ceiling.md``), and the fixed-demo programs err on other rows than the
vote does. This benchmark asks whether a combination of the two can do better than either, and how much
better: the ceiling of a "vote prior" search move. Per prompt (below), per dev and test row of the
optimizers benchmark (the same seeded, label-stratified samples), it reads the model's probability of each
label where the greedy, grammar-constrained answer chooses it (``LocalEngine.label_distribution``: the
label's first token, one LM call per row), then scores on test the rule chosen on dev among

    score(label) = log p_LM(label) + c * [label == first choice] + w * log((n_k(label) + 0.5) / (k + 1))

(``n_k``: how many of the k BM25-nearest train examples carry the label; ``c``: a bias, a calibration
fitted on dev; ``w``: the vote's weight). The rule is a per-call ``logit_bias`` on each label's first token
(``c`` plus ``w`` times the log-share), so a messages export could carry it next to the retrieval rule.
Rows: the LM alone (``w = 0, c = 0``), calibrated on dev (``w = 0``), the vote alone, the combination, and
the rows either of the LM and the vote gets right (an oracle, not a method). Binary labels only (one bias).

Prompts: ``zero-shot``; ``labeled-4-s<seed>`` (4 fixed, label-balanced train demos, seeds 0-2, as in
``search_moves.py``); ``retrieved-8-vote`` (the search's warm start). Each prompt is a cell written when it
finishes; a rerun skips it. Then, per cell, the rule fitted on dev is run as a program on the test rows
(``with_rule``, written into the cell; skipped when done). LM cache off; about 40 minutes in all here:

    .venv/bin/python benchmarks/vote_prior.py
    .venv/bin/python benchmarks/vote_prior.py --report

Writes ``benchmarks/results/vote_prior/`` (cells) and ``benchmarks/results/vote_prior.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from autoprompt._retrieval import Retriever  # noqa: E402
from autoprompt._vote_prior import LabelPrior, attach_prior  # noqa: E402
from autoprompt.decision._stats import bootstrap_ci, paired_test  # noqa: E402
from autoprompt.store import atomic_write, dump_json  # noqa: E402
from _common import code_version, write_markdown  # noqa: E402
from search_moves import program_for  # noqa: E402

CELLS = HERE / "results" / "vote_prior"
OUT = HERE / "results" / "vote_prior.md"
TASK = "sentiment"
LIMITS = {"dev": 200, "test": None}  # the optimizers benchmark's rows (benchmarks/optimizers.py SETTINGS)
PROMPTS = ["zero-shot", "labeled-4-s0", "labeled-4-s1", "labeled-4-s2", "retrieved-8-vote"]
KS = (4, 8, 16, 32, 64)
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
BIASES = tuple(round(float(c), 2) for c in np.linspace(-6.0, 6.0, 49))
logger = logging.getLogger("benchmarks.vote_prior")


def rows(task: Any) -> dict[str, list[dict]]:
    return {split: [dict(ex) for ex in task.examples(split, limit=limit)] for split, limit in LIMITS.items()}


def label_probabilities(task: Any, prompt: str, examples: list[dict]) -> list[list[float] | None]:
    """The model's probabilities of ``task.choices`` (first tokens) for each example under ``prompt``."""
    from autoprompt._adapter import CompactJSONAdapter
    from autoprompt._calibration import local_engine
    from autoprompt._retrieval import demos_for
    from autoprompt.export._render import json_schema

    move, _, seed = prompt.partition("-s") if prompt.startswith("labeled-") else (prompt, "", "0")
    program = program_for(task, move, int(seed or 0))
    (_, predictor), = program.named_predictors()
    engine = local_engine()
    ids = engine.first_tokens([str(c) for c in task.choices])
    signature, adapter = predictor.signature, CompactJSONAdapter()
    schema = json_schema(signature)
    out = []
    for example in examples:
        inputs = {f: example[f] for f in signature.input_fields}
        messages = adapter.format(signature, demos_for(predictor, inputs), inputs)
        out.append(engine.label_distribution(messages, schema=schema, field=task.label_field, token_ids=ids))
    return out


def run(prompts: list[str]) -> None:
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{TASK}.py"))
    if len(task.choices or ()) != 2:
        raise SystemExit(f"task {TASK}: the rule has one bias, for two labels; got choices {task.choices}")
    splits = rows(task)
    lm = autoprompt.build_lm("local", cache=False)
    for prompt in prompts:
        path = CELLS / TASK / f"{prompt}.json"
        if path.exists():
            logger.info("%s: done, skipped", path.relative_to(HERE))
            continue
        started = time.monotonic()
        with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
            probs = {split: label_probabilities(task, prompt, examples) for split, examples in splits.items()}
        seconds = time.monotonic() - started
        cell = {"task": TASK, "prompt": prompt, "choices": [str(c) for c in task.choices],
                "rows": {split: len(v) for split, v in probs.items()}, "probabilities": probs,
                "seconds": round(seconds, 1), "code": code_version(), "command": " ".join(["python", *sys.argv])}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, dump_json(cell))
        logger.info("%s: %d rows in %.0f s", path.relative_to(HERE), sum(cell["rows"].values()), seconds)


def with_rule(program: dspy.Module, pool: list[dict], task: Any, token_ids: list[int], *, k: int, w: float,
              c: float) -> dspy.Module:
    """``program`` (one predictor) with the rule as a per-call ``logit_bias``: the library's label prior
    (:class:`autoprompt._vote_prior.LabelPrior`, the search's move) with weight ``w`` and bias ``c`` on the first
    choice, whose two labels then differ by ``c + w * log((n1 + 0.5) / (n2 + 0.5))``. The answer is the
    program's own greedy, grammar-constrained one, parsed as in any evaluation."""
    (_, predictor), = program.named_predictors()
    choices = [str(ch) for ch in task.choices]
    attach_prior(predictor, LabelPrior(pool, task.input_fields, task.label_field, choices, token_ids, k=k, weight=w,
                                       bias={choices[0]: c}))
    return program


def run_programs(prompts: list[str]) -> None:
    """For each finished cell of ``prompts``: the rule fitted on its dev rows (:func:`fit`), run as a program
    (:func:`with_rule`) on the test rows through DSPy and the engine; written into the cell."""
    from autoprompt._calibration import local_engine
    from autoprompt.evaluate import evaluate_program

    task = autoprompt.load_task(str(ROOT / "tasks" / f"{TASK}.py"))
    splits = rows(task)
    gold, vote = truth(task, splits), vote_log_odds(task, splits)
    pool = [dict(ex) for ex in task.examples("train")]
    lm = autoprompt.build_lm("local", cache=False)
    for prompt in prompts:
        path = CELLS / TASK / f"{prompt}.json"
        if not path.exists():
            continue
        cell = json.loads(path.read_text())
        if "program" in cell:
            logger.info("%s: program run done, skipped", path.relative_to(HERE))
            continue
        rule = fit(log_odds(cell), vote, gold, weights=WEIGHTS, biases=BIASES, ks=KS)
        move, _, seed = prompt.partition("-s") if prompt.startswith("labeled-") else (prompt, "", "0")
        started = time.monotonic()
        with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
            ids = local_engine().first_tokens([str(c) for c in task.choices])
            program = with_rule(program_for(task, move, int(seed or 0)), pool, task, ids, k=rule["k"], w=rule["w"],
                                c=rule["c"])
            evaluation = evaluate_program(program, task, "test", limit=LIMITS["test"], progress=False)
        scores = [r["score"] for r in evaluation.records]
        cell["program"] = {"k": rule["k"], "w": rule["w"], "c": rule["c"], "test_scores": scores,
                           "test": evaluation.score, "arithmetic_test": float(np.mean(rule["test_scores"])),
                           "parse_failures": evaluation.parse_failures,
                           "seconds": round(time.monotonic() - started, 1), "code": code_version()}
        atomic_write(path, dump_json(cell))
        logger.info("%s: the rule as a program, test %.1f%% (arithmetic %.1f%%)", path.relative_to(HERE),
                    100 * evaluation.score, 100 * cell["program"]["arithmetic_test"])


def truth(task: Any, splits: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Per split: whether each row's label is the first choice."""
    first = str(task.choices[0])
    return {s: np.asarray([str(ex[task.label_field]) == first for ex in v]) for s, v in splits.items()}


def log_odds(cell: dict) -> dict[str, np.ndarray]:
    """Per split: ``log p1 - log p2`` of each row, from a cell's label probabilities."""
    return {s: np.asarray([math.log(max(p[0], 1e-12)) - math.log(max(p[1], 1e-12)) for p in v])
            for s, v in cell["probabilities"].items()}


def vote_log_odds(task: Any, splits: dict[str, list[dict]]) -> dict[str, dict[int, np.ndarray]]:
    """Per split and k: ``log((n_first + 0.5) / (n_second + 0.5))`` over the k BM25-nearest train examples
    (the search's index and tokens; an example whose inputs equal the row's skipped, nearest first)."""
    pool = [dict(ex) for ex in task.examples("train")]
    first = str(task.choices[0])
    retriever = Retriever(pool, task.input_fields, max(KS))
    out: dict[str, dict[int, np.ndarray]] = {}
    for split, examples in splits.items():
        odds = {k: [] for k in KS}
        for ex in examples:
            near = [str(d[task.label_field]) for d in reversed(retriever(dict(ex)))]  # nearest first
            for k in KS:
                n = near[:k].count(first)
                odds[k].append(math.log((n + 0.5) / (k - n + 0.5)))
        out[split] = {k: np.asarray(v) for k, v in odds.items()}
    return out


def fit(lm_odds: dict[str, np.ndarray], vote: dict[str, dict[int, np.ndarray]], gold: dict[str, np.ndarray],
        *, weights: tuple[float, ...], biases: tuple[float, ...], ks: tuple[int, ...]) -> dict:
    """The (k, w, c) with the best dev accuracy of ``lm_odds + c + w * vote_odds > 0`` (answer: the first
    choice); ties to the smaller w, then the smaller |c|, then the smaller k. Its test scores per row."""
    best = None
    for w in weights:
        for c in sorted(biases, key=abs):
            for k in ks if w else ks[:1]:
                dev = float(np.mean(((lm_odds["dev"] + c + w * vote["dev"][k]) > 0) == gold["dev"]))
                if best is None or dev > best["dev"]:
                    best = {"k": k, "w": w, "c": c, "dev": dev}
    k, w, c = best["k"], best["w"], best["c"]
    best["test_scores"] = (((lm_odds["test"] + c + w * vote["test"][k]) > 0) == gold["test"]).astype(float).tolist()
    return best


def logistic(x: np.ndarray, y: np.ndarray, *, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Weights (intercept first) of an L2-penalised logistic regression of ``y`` (0/1) on ``x``, by Newton's
    method (the intercept not penalised). numpy rather than scikit-learn: a few lines, no new dependency."""
    a = np.hstack([np.ones((len(x), 1)), x])
    penalty = l2 * np.eye(a.shape[1])
    penalty[0, 0] = 0.0
    beta = np.zeros(a.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-a @ beta))
        gradient = a.T @ (p - y) + penalty @ beta
        hessian = a.T @ (a * (p * (1 - p))[:, None]) + penalty
        beta = beta - np.linalg.solve(hessian, gradient)
    return beta


def report() -> str:
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{TASK}.py"))
    splits = rows(task)
    first = str(task.choices[0])
    gold, vote = truth(task, splits), vote_log_odds(task, splits)
    table, data = [], []
    features: dict[str, dict[str, np.ndarray]] = {}

    def line(prompt: str, rule: str, fitted: dict, code: str) -> None:
        scores = fitted["test_scores"]
        low, high = bootstrap_ci(scores, seed=0)
        if "weights" in fitted:
            params = f"k={fitted['k']}"
        elif fitted.get("k") is None:
            params = "-"
        elif fitted["w"] == 0:
            params = f"c={fitted['c']:g}"
        else:
            params = f"k={fitted['k']}, w={fitted['w']:g}, c={fitted['c']:g}"
        against = "-"
        if fitted.get("k") is not None and (fitted.get("w") or "weights" in fitted) and prompt != "(none)":
            same = ((vote["test"][fitted["k"]] > 0) == gold["test"]).astype(float)
            test = paired_test(scores, same)
            against = f"{100 * test['difference']:+.1f} (p = {test['p_value']:.2g})"
        table.append([prompt, rule, params, "-" if math.isnan(fitted["dev"]) else f"{100 * fitted['dev']:.1f}",
                      f"{100 * np.mean(scores):.1f} [{100 * low:.1f}, {100 * high:.1f}]", against, code])
        data.append({"prompt": prompt, "rule": rule, **{k: v for k, v in fitted.items() if k != "test_scores"},
                     "test": float(np.mean(scores)), "test_interval": [low, high]})

    alone = fit({s: np.zeros(len(v)) for s, v in gold.items()}, vote, gold, weights=(1.0,), biases=(0.0,), ks=KS)
    line("(none)", "the vote alone (k chosen on dev)", alone, "-")
    for path in sorted((CELLS / TASK).glob("*.json"), key=lambda p: PROMPTS.index(p.stem) if p.stem in PROMPTS else 99):
        cell = json.loads(path.read_text())
        probs = cell["probabilities"]
        if any(p is None for v in probs.values() for p in v):
            logger.warning("%s: rows without a label choice; skipped", path.name)
            continue
        odds = log_odds(cell)
        code = cell["code"]
        lm = fit(odds, vote, gold, weights=(0.0,), biases=(0.0,), ks=KS)
        lm.update(k=None)
        line(cell["prompt"], "the LM alone (greedy)", lm, code)
        line(cell["prompt"], "the LM, bias fitted on dev", fit(odds, vote, gold, weights=(0.0,), biases=BIASES, ks=KS),
             code)
        line(cell["prompt"], "the LM + the vote (k, w, c fitted on dev)",
             fit(odds, vote, gold, weights=WEIGHTS, biases=BIASES, ks=KS), code)
        half = {"dev": slice(0, 100), "test": slice(None)}  # the search's max_dev: fewer rows to fit on
        line(cell["prompt"], "the LM + the vote, fitted on the first 100 dev rows only",
             fit({s: odds[s][half[s]] for s in odds}, {s: {k: v[half[s]] for k, v in vote[s].items()} for s in vote},
                 {s: gold[s][half[s]] for s in gold}, weights=WEIGHTS, biases=BIASES, ks=KS), code)
        unlabelled = -float(np.median(odds["dev"]))  # batch calibration: the dev inputs' median, labels unused
        line(cell["prompt"], "the LM + the 64-vote, w = 1, c = minus the median dev log-odds (no labels)",
             fit(odds, vote, gold, weights=(1.0,), biases=(round(unlabelled, 2),), ks=(64,)), code)
        if "program" in cell:
            run = cell["program"]
            line(cell["prompt"], "the same rule run as a program (per-call logit_bias, greedy answers parsed)",
                 {**run, "dev": float("nan")}, run["code"])
        either = {"k": None, "dev": float(np.mean(((odds["dev"] > 0) == gold["dev"])
                                                  | ((vote["dev"][alone["k"]] > 0) == gold["dev"]))),
                  "test_scores": (((odds["test"] > 0) == gold["test"])
                                  | ((vote["test"][alone["k"]] > 0) == gold["test"])).astype(float).tolist()}
        line(cell["prompt"], f"oracle: the LM alone or the {alone['k']}-vote right", either, code)
        features[cell["prompt"]] = odds
    if len(features) > 1:  # every prompt's LM and the vote: one LM call per prompt per row
        best = None
        for k in KS:
            x = {s: np.column_stack([*(f[s] for f in features.values()), vote[s][k]]) for s in gold}
            beta = logistic(x["dev"], gold["dev"].astype(float))
            answer = {s: (beta[0] + x[s] @ beta[1:]) > 0 for s in gold}
            dev = float(np.mean(answer["dev"] == gold["dev"]))
            if best is None or dev > best["dev"]:
                best = {"k": k, "dev": dev, "weights": [round(float(b), 3) for b in beta],
                        "test_scores": (answer["test"] == gold["test"]).astype(float).tolist()}
        table_prompt = " + ".join(features)
        line(table_prompt, "every prompt's LM + the vote (logistic regression on dev, L2 1)", best, "-")
    notes = (f"Task {TASK}: {len(splits['dev'])} dev rows (the rule's choice), {len(splits['test'])} test rows "
             "(the optimizers benchmark's samples). LM: the embedded SmolLM2-135M-Instruct, its probability of each "
             "label's first token where the greedy constrained answer chooses it, cache off. Rule: answer the first "
             f"choice ({first}) when log p1 - log p2 + c + w * log((n1 + 0.5) / (n2 + 0.5)) > 0, n: labels among "
             f"the k BM25-nearest train examples; k in {list(KS)}, w in {list(WEIGHTS)}, c in [-6, 6] by 0.25, chosen "
             "on dev (ties: smaller w, |c|, k); the vote alone answers the second choice on a tie. Test: mean and 95% percentile-bootstrap interval; "
             "against the vote of the same k alone on the same rows: the difference and the exact McNemar p. The "
             "program rows run the fitted rule through DSPy and the engine (with_rule: the search's label prior, "
             "its logit_bias split between the two labels' first tokens, the answer parsed as in any evaluation; the "
             "cells at 1e51236 ran a class of this script's own that sent the same biases). The 'no labels' rows set c "
             "without the dev labels (batch calibration: the prompt's answers centred on the dev inputs). The oracle "
             "row is not a method: the rows either side gets right.")
    text = write_markdown(OUT, "The LM and its neighbours' vote, combined", notes,
                          ["prompt", "rule", "fitted", "dev %", "test % [95% CI]", "vs the k-vote alone (test)", "code"], table)
    atomic_write(OUT.with_suffix(".json"), dump_json({"task": TASK, "rows": data}))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", nargs="+", default=PROMPTS, choices=PROMPTS)
    parser.add_argument("--report", action="store_true", help="only write the table from the finished cells")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.report:
        run(args.prompts)
        run_programs(args.prompts)
    print(report())


if __name__ == "__main__":
    main()
