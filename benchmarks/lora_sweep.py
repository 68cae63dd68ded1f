"""The LoRA recipe sweep behind ``LoRAFinetuner``'s defaults (issue 8, item 2): rank, learning rate, epochs.

The data is what a ``w`` step trains on, at the scale a ``w`` step sees: the zero-shot program's
prompts of a seeded, label-balanced sample of the train split answered with the gold labels
(``compile_training_data(answers="gold", balance=True, max_traces=N, val_fraction=0.1)``; with
gold answers the sweep needs no tracing LM calls, and a passing trace of a one-field classifier *is*
its gold label). For every configuration the LoRA is trained (checkpoint chosen by decoded
validation accuracy, as in a ``w`` step) and the zero-shot program on the fine-tuned model is scored
on dev (what a default is chosen by) and test. Settings per task:

- iris: all 50 train rows (39 after balancing), dev and test 50 rows each;
- sentiment: 150 train rows (75 per label: the size of the traces a p -> w step keeps, see
  ``better_together.md``), dev 200, test 436.

Each cell (task, configuration, seed) is written to ``benchmarks/results/lora_sweep/`` as it
finishes and a rerun skips it; every cell gets its own empty LM cache. ``--report`` writes
``lora_sweep.md``:

    .venv/bin/python benchmarks/lora_sweep.py --task iris sentiment
    .venv/bin/python benchmarks/lora_sweep.py --report
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import write_markdown  # noqa: E402

CELLS = HERE / "results" / "lora_sweep"
RUNS = HERE / "runs" / "lora-sweep"

SETTINGS: dict[str, dict[str, Any]] = {
    "iris": {"max_traces": None, "dev_limit": None, "test_limit": None},
    "sentiment": {"max_traces": 150, "dev_limit": 200, "test_limit": None},
}
# (rank, learning rate, epochs); the current defaults are rank 8, 1e-3, 2 epochs
GRID: dict[str, list[tuple[int, float, int]]] = {
    "iris": [(8, 1e-3, 2), (8, 1e-3, 8), (8, 3e-3, 2), (8, 3e-3, 8), (16, 1e-3, 2), (4, 1e-3, 2)],
    "sentiment": [(8, 1e-3, 2), (8, 3e-3, 2), (8, 1e-3, 6), (16, 1e-3, 2), (8, 3e-4, 2)],
}


def config_name(rank: int, lr: float, epochs: int) -> str:
    return f"r{rank}-lr{lr:g}-e{epochs}"


def run_cell(task_name: str, rank: int, lr: float, epochs: int, seed: int) -> None:
    import dspy

    import autoprompt
    from autoprompt.evaluate import evaluate_program
    from autoprompt.export import compile_training_data
    from autoprompt.finetune import LoRAFinetuner
    from autoprompt.store import atomic_write, dump_json

    name = config_name(rank, lr, epochs)
    path = CELLS / task_name / f"s{seed}" / f"{name}.json"
    if path.is_file():
        return
    settings = SETTINGS[task_name]
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{task_name}.py"))
    folder = RUNS / task_name / f"s{seed}" / name
    shutil.rmtree(folder, ignore_errors=True)
    autoprompt.configure_cache(folder / "cache")  # empty: every cell scores with its own cache
    program = task.make_program()
    data = compile_training_data(program, task, answers="gold", balance=True, max_traces=settings["max_traces"],
                                 val_fraction=0.1, seed=seed, progress=False)
    started = time.monotonic()
    tuned = LoRAFinetuner(rank=rank, alpha=2.0 * rank, learning_rate=lr, epochs=epochs, seed=seed,
                          progress=False).finetune(data, folder / "model")
    train_seconds = time.monotonic() - started
    scores = {}
    with dspy.context(lm=tuned.lm(), adapter=autoprompt.CompactJSONAdapter()):
        for split in ("dev", "test"):
            e = evaluate_program(program, task, split, limit=settings[f"{split}_limit"], progress=False)
            scores[split] = {"score": e.score, "n": e.n, "parse_failures": e.parse_failures, "errors": e.errors}
    m = tuned.metrics
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, dump_json({
        "task": task_name, "seed": seed, "rank": rank, "alpha": 2.0 * rank, "learning_rate": lr, "epochs": epochs,
        "train_rows": len(data.train), "val_rows": len(data.val), "labels": data.manifest["labels"]["kept"],
        "scores": scores, "train_seconds": round(train_seconds, 1),
        "finetune": {k: m.get(k) for k in ("steps", "best", "val_accuracy_base", "tokens_per_second", "dtype")},
        "cache": "own LM cache, empty at its start",
        "command": "python benchmarks/lora_sweep.py --task " + task_name,
    }))
    shutil.rmtree(folder, ignore_errors=True)  # the adapter is not needed once scored
    print(f"{task_name} s{seed} {name}: dev {100 * scores['dev']['score']:.1f} test "
          f"{100 * scores['test']['score']:.1f} ({train_seconds / 60:.1f} min training)", flush=True)


def report() -> str:
    cells = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*/s*/*.json"))]
    rows = []
    for task in sorted({c["task"] for c in cells}):
        mine = [c for c in cells if c["task"] == task]
        keys = sorted({(c["rank"], c["learning_rate"], c["epochs"]) for c in mine})
        best_dev = max(statistics.mean(c["scores"]["dev"]["score"] for c in mine
                                       if (c["rank"], c["learning_rate"], c["epochs"]) == k) for k in keys)
        for key in keys:
            group = [c for c in mine if (c["rank"], c["learning_rate"], c["epochs"]) == key]
            dev = statistics.mean(c["scores"]["dev"]["score"] for c in group)
            test = statistics.mean(c["scores"]["test"]["score"] for c in group)
            best = [c["finetune"]["best"] or {} for c in group]
            rows.append([task, str(key[0]), f"{key[1]:g}", str(key[2]), str(len(group)), str(group[0]["train_rows"]),
                         f"{100 * dev:.1f}" + (" (best)" if dev == best_dev else ""), f"{100 * test:.1f}",
                         ", ".join(str(b.get("step")) for b in best) + " / " + str(group[0]["finetune"]["steps"]),
                         f"{statistics.mean(c['train_seconds'] for c in group) / 60:.1f}"])
    notes = ("Gold-answered zero-shot prompts of a seeded, label-balanced train sample (iris: the whole split, "
             "sentiment: 150 rows), LoRA on every linear layer (alpha = 2 x rank), checkpoint chosen by decoded "
             "validation accuracy; the zero-shot program on the fine-tuned model scored on dev (the column a "
             "default is chosen by) and test. Each cell with its own empty LM cache. 'best step' is the chosen "
             "checkpoint's optimizer step / the steps trained. Cells written by `python benchmarks/lora_sweep.py "
             "--task iris sentiment` (seed 0; the grid's other cells are not run yet, a rerun adds them). The "
             "iris e8 cell's training time was inflated by a test run sharing the 2 cores.")
    return write_markdown(HERE / "results" / "lora_sweep.md", "LoRA recipe sweep (accuracy %)", notes,
                          ["task", "rank", "lr", "epochs", "seeds", "train rows", "dev", "test", "best step",
                           "train min"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--report", action="store_true", help="only rebuild lora_sweep.md from the cells")
    args = parser.parse_args()
    if not args.report:
        for seed in args.seeds:
            for task in args.task:
                for rank, lr, epochs in GRID[task]:
                    run_cell(task, rank, lr, epochs, seed)
    print(report())


if __name__ == "__main__":
    main()
