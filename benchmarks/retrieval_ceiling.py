"""What the retrieved demos alone know: a majority vote of the BM25-nearest train examples' labels, no LM.

The prompt search's per-input demos are the ``k`` train examples nearest to the input by BM25
(:class:`autoprompt._retrieval.Retriever`, the same index, tokens and tie rule). This benchmark scores
the vote of those neighbours' labels (ties: the nearest neighbour's label among the tied ones) on the
rows the optimizers benchmark uses (``benchmarks/optimizers.py``: the same seeded, label-stratified dev
and test samples), with a 95% bootstrap interval on test; the ``k`` that ``autoprompt decide`` would choose
for its no-LM reference (the best dev score, ties to the smaller) is marked. It is the reference a prompted program with
retrieved demos has to beat to show that the LM adds anything to its neighbours: the search's best
programs on the 135M model are set beside it in the README. No LM call, a few seconds per task:

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
from autoprompt._retrieval import neighbour_votes  # noqa: E402
from autoprompt.decision._measure import NEIGHBOUR_KS  # noqa: E402
from autoprompt.decision._stats import bootstrap_ci  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(LIMITS), default=sorted(LIMITS))
    args = parser.parse_args()
    cells: dict[str, dict] = {}
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
        chosen = max(KS, key=lambda k: (cells[f"{name}/k{k}"]["dev"], -k))  # decide's reference: best dev, smaller k
        rows[first + KS.index(chosen)][1] += " (chosen on dev)"
    version = code_version()
    notes = (f"Code {version}. The label most frequent among the k BM25-nearest train examples (the search's "
             "per-input demo retrieval: same index, tokens and ties; an example whose inputs equal the row's is "
             "skipped), scored on the optimizers benchmark's rows (seeded, label-stratified samples; iris whole "
             "splits). Test: mean with a 95% percentile-bootstrap interval; rows in brackets. No LM call.")
    text = write_markdown(RESULTS / "retrieval_ceiling.md", "Retrieved demos alone: the neighbours' vote",
                          notes, ["task", "k", "train rows", "dev % (rows)", "test % [95% CI] (rows)"], rows)
    (RESULTS / "retrieval_ceiling.json").write_text(json.dumps({"code": version, "cells": cells}, indent=1,
                                                               sort_keys=True) + "\n")
    print(text)


if __name__ == "__main__":
    main()
