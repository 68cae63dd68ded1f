"""Each move of the search measured on its own: the same program with one move applied, scored on a seeded
label-stratified sample of the dev split (the split the search ranks on), no search around it.

Moves (a cell is task x seed x move):

- ``zero-shot``: the task's program as written;
- ``template-N``: the N-th instruction written from the signature without an LM
  (:func:`autoprompt._instructions.paraphrases`, what ``n_templates`` adds to the pool);
- ``labeled-K``: K labelled train examples as fixed demos, balanced over the labels (the search's labelled
  demo sets; the seed picks them);
- ``retrieved-K``: the K train examples nearest to each input by BM25 (``retrieved_demos=True``);
- ``retrieved-K-vote``: the same K demos grouped by label, the label most of them carry next to the input
  (``demo_order="vote"``);
- ``<move>+cal``: the move with its label choice calibrated on content-free inputs (``calibrate=True``,
  :mod:`autoprompt._calibration`; 3 more LM calls, not counted in the s/example); ``+cal50``: at half
  strength.

Each cell runs with the LM cache off (no cell gets a free call), is written to
``benchmarks/results/search_moves/<task>/<move>[-s<seed>].json`` as it finishes, and a rerun skips it.
Only ``labeled-K`` depends on a seed; the other moves are greedy and run once.
``--report`` rebuilds ``search_moves.md`` from the cells alone:

    .venv/bin/python benchmarks/search_moves.py --task sentiment --seeds 0 1 2
    .venv/bin/python benchmarks/search_moves.py --task banking77 --moves zero-shot retrieved-4
    .venv/bin/python benchmarks/search_moves.py --task sentiment --moves retrieved-4-vote retrieved-8-vote
    .venv/bin/python benchmarks/search_moves.py --task banking77 --moves retrieved-4-vote
    .venv/bin/python benchmarks/search_moves.py --report
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from autoprompt._instructions import paraphrases  # noqa: E402
from autoprompt._retrieval import Retriever, attach  # noqa: E402
from autoprompt.evaluate import evaluate_program  # noqa: E402
from autoprompt.optimizers.optuna import stratified_sample  # noqa: E402
from autoprompt.store import atomic_write, dump_json  # noqa: E402
from _common import code_version, write_markdown  # noqa: E402

CELLS = HERE / "results" / "search_moves"
OUT = HERE / "results" / "search_moves.md"
MOVES = ["zero-shot", "zero-shot+cal", "zero-shot+cal50", "template-1", "template-2", "template-3", "template-4", "labeled-4",
         "labeled-4+cal", "labeled-4+cal50", "retrieved-4", "retrieved-4+cal", "retrieved-4+cal50", "retrieved-8", "retrieved-4-vote", "retrieved-8-vote"]
LIMITS = {"sentiment": 200, "iris": None, "banking77": 154}  # dev rows scored (seeded, label-stratified)
logger = logging.getLogger("benchmarks.search_moves")


def program_for(task: Any, move: str, seed: int) -> dspy.Module:
    """The task's program with ``move`` applied (calibration: LM calls on DSPy's current LM)."""
    from autoprompt._calibration import label_bias

    move, _, cal = move.partition("+")
    strength = {"": 0.0, "cal": 1.0, "cal50": 0.5}[cal]
    program = task.make_program()
    for _, predictor in program.named_predictors():
        fields = set(predictor.signature.fields)
        if move.startswith("template-"):
            choices = task.choices if task.label_field in predictor.signature.output_fields else None
            found = paraphrases(predictor.signature, choices)
            n = int(move.split("-")[1])
            if n >= len(found):
                raise SystemExit(f"{move}: task {task.name} has {len(found) - 1} templates")
            predictor.signature = predictor.signature.with_instructions(found[n])
        elif move.startswith("labeled-"):
            sample = stratified_sample(task.examples("train"), int(move.split("-")[1]), task.label_field,
                                       random.Random(seed))
            predictor.demos = [dspy.Example(**{k: v for k, v in ex.items() if k in fields}) for ex in sample]
        elif move.startswith("retrieved-"):
            pool = [{k: v for k, v in ex.items() if k in fields} for ex in task.examples("train")]
            k, _, order = move.removeprefix("retrieved-").partition("-")
            attach(predictor, Retriever(pool, list(predictor.signature.input_fields), int(k),
                                        order="vote" if order == "vote" else "similarity",
                                        label_field=task.label_field))
        elif move != "zero-shot":
            raise SystemExit(f"unknown move {move!r}; moves: {', '.join(MOVES)}")
        if strength:
            bias = label_bias(predictor, field=task.label_field, choices=list(task.choices or ()), strength=strength)
            if bias is None:
                raise SystemExit(f"{move}+{cal}: task {task.name}'s labels cannot be calibrated on this LM")
            predictor.config = {**predictor.config, "logit_bias": bias}
    return program


def seeded(move: str) -> bool:
    """Moves whose outcome a seed changes (which labelled demos); the others are greedy and deterministic."""
    return move.startswith("labeled-")  # "+cal" included


def cell_path(task: str, move: str, seed: int) -> Path:
    return CELLS / task / (f"{move}-s{seed}.json" if seeded(move) else f"{move}.json")


def run(task_name: str, seeds: list[int], moves: list[str], limit: int | None) -> None:
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{task_name}.py"))
    lm = autoprompt.build_lm("local", cache=False)
    for move in moves:
        for seed in seeds if seeded(move) else [0]:
            path = cell_path(task_name, move, seed)
            if path.exists():
                logger.info("%s: done, skipped", path.relative_to(HERE))
                continue
            with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
                program = program_for(task, move, seed)
            started = time.monotonic()
            with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
                evaluation = evaluate_program(program, task, "dev", limit=limit, progress=False)
            seconds = time.monotonic() - started
            scores = [r["score"] for r in evaluation.records]
            predicted = [str(r["predicted"]) for r in evaluation.records]
            cell = {
                "task": task_name, "seed": seed if seeded(move) else None, "move": move, "split": "dev",
                "rows": len(scores), "score": evaluation.score, "scores": scores,
                "predicted_share": {p: predicted.count(p) / len(predicted) for p in sorted(set(predicted))},
                "logit_bias": [p.config.get("logit_bias") for p in program.predictors()],
                "parse_failures": evaluation.parse_failures, "seconds": round(seconds, 1),
                "seconds_per_example": round(seconds / max(len(scores), 1), 3), "code": code_version(),
                "command": " ".join(["python", *sys.argv]),
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, dump_json(cell))
            logger.info("%s: %.1f%% (%d rows, %.0f s)", path.relative_to(HERE), 100 * evaluation.score, len(scores),
                        seconds)


def report() -> str:
    rows = []
    for task_dir in sorted(p for p in CELLS.iterdir() if p.is_dir()) if CELLS.exists() else []:
        cells: dict[str, list[dict]] = {}
        for path in sorted(task_dir.glob("*.json")):
            cell = json.loads(path.read_text())
            cells.setdefault(cell["move"], []).append(cell)
        base = cells.get("zero-shot", [None])[0]
        for move in sorted(cells, key=lambda m: MOVES.index(m) if m in MOVES else len(MOVES)):
            got = sorted(cells[move], key=lambda c: c["seed"] or 0)
            scores = [100 * c["score"] for c in got]
            mean = statistics.mean(scores)
            # paired on the same dev rows: the SE of the mean per-example difference to zero-shot
            diff = ""
            if base is not None and move != "zero-shot":
                d = [a - b for c in got for a, b in zip(c["scores"], base["scores"])]
                se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
                diff = f"{100 * statistics.mean(d):+.1f} (SE {100 * se:.1f})"
            top = max(got[0]["predicted_share"].items(), key=lambda kv: kv[1])
            rows.append([
                task_dir.name, move, ", ".join(str(c["seed"]) for c in got) if seeded(move) else "-",
                str(got[0]["rows"]), " / ".join(f"{s:.1f}" for s in scores), f"{mean:.1f}", diff,
                f"{top[0]} {100 * top[1]:.0f}%", f"{statistics.mean(c['seconds_per_example'] for c in got):.2f}",
                ", ".join(sorted({c["code"] for c in got})),
            ])
    notes = ("Each move of the search on its own: the task's program with one change, scored on the same "
             "seeded, label-stratified sample of the dev split (the split the search ranks on), greedy, LM cache "
             "off. Only the labelled demos depend on a seed (which examples); the other moves are deterministic "
             "and run once. `vs zero-shot`: mean per-example difference on the same rows (pooled over seeds) and "
             "its standard error. `most said`: the most frequent answer and its share (first seed).")
    return write_markdown(OUT, "Search moves, each on its own", notes,
                          ["task", "move", "seeds", "dev rows", "score per seed", "mean", "vs zero-shot",
                           "most said", "s/example", "code"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(LIMITS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--moves", nargs="+", default=MOVES)
    parser.add_argument("--limit", type=int, help="dev rows (default: per task)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report from the cells")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.report:
        if args.task is None:
            parser.error("--task is required (or --report)")
        run(args.task, args.seeds, args.moves, args.limit or LIMITS[args.task])
    print(report())


if __name__ == "__main__":
    main()
