"""How many epochs a ``w`` step needs (issue 8, items 2 and 3): refit a BetterTogether step's own traces.

A ``w`` step's LoRA trains 2 epochs by default (more on small data: at least ``min_steps``, 150). Most
of that time buys little on SST-2's 1000 traces: the validation accuracy after one epoch was within 2
points of the best point of two on four of five steps. Whether stopping at the 150-step floor (or at one
epoch) costs *test* accuracy is what this script measures. It takes a finished ``w`` step of
``benchmarks/better_together.py`` (its run folder under ``benchmarks/runs/``: the traces it trained on in
``data/``, its program in ``prompt.json``), trains the LoRA again on the same traces with the same seed and another recipe, and
scores the step's program on the new adapter on dev and test. The reference is the step's own cell in
``benchmarks/results/better_together/`` (same data, same seed, the default recipe).

Each cell (task, seed, step, recipe) is written to ``benchmarks/results/lora_epochs/`` as it finishes
and a rerun skips it; every cell scores with its own empty LM cache. ``--report`` writes
``lora_epochs.md``:

    .venv/bin/python benchmarks/lora_epochs.py --task sentiment --seed 2 --steps w p-w [--recipes s150 e1]
    .venv/bin/python benchmarks/lora_epochs.py --report
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from _common import code_version, write_markdown  # noqa: E402

CELLS = HERE / "results" / "lora_epochs"
RUNS = HERE / "runs"
REFERENCE = HERE / "results" / "better_together"
#: recipe name -> LoRAFinetuner options (the rest: the w step's defaults). ``s150``: the default's floor of
#: 150 steps without its second epoch (SST-2's 900 training traces are 113 steps an epoch; the default trains
#: 226); ``e1``: one epoch, below that floor; ``top10``/``top15``: LoRA on the last 10/15 of the 30 blocks only
#: (the backward pass stops there: 1.8x/1.4x the tokens/s in ``lora_speed.md``); ``again``: the default recipe
#: refit now, on this machine (its speed drifts: the reference's minutes ran on another day)
RECIPES: dict[str, dict[str, Any]] = {
    "s150": {"max_steps": 150},
    "e1": {"epochs": 1},
    "top10": {"top_layers": 10},
    "top15": {"top_layers": 15},
    "again": {},
}


def load_data(folder: Path) -> Any:
    """The traces a w step saved (``data/train.jsonl``, ``val.jsonl``, ``manifest.json``) as TrainingData."""
    from autoprompt.export import TrainingData

    def rows(name: str) -> list[dict[str, Any]]:
        path = folder / name
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    manifest = json.loads((folder / "manifest.json").read_text())
    return TrainingData(rows("train.jsonl"), rows("val.jsonl"), manifest.get("counts", {}), manifest)


def run_cell(task_name: str, seed: int, step: str, recipe: str, command: str) -> None:
    import dspy

    import autoprompt
    from autoprompt.evaluate import evaluate_program
    from autoprompt.export import load_prompt
    from autoprompt.finetune import LoRAFinetuner
    from autoprompt.store import atomic_write, dump_json

    path = CELLS / task_name / f"s{seed}" / f"{step}-{recipe}.json"
    if path.is_file():
        return
    reference = json.loads((REFERENCE / task_name / f"s{seed}" / "autoprompt" / f"{step}.json").read_text())
    source = RUNS / f"{task_name}-s{seed}-autoprompt" / "steps" / step
    if not (source / "data" / "train.jsonl").is_file():
        raise SystemExit(f"{source}/data/train.jsonl not found: run `python benchmarks/better_together.py --task "
                         f"{task_name} --seeds {seed}` first (its run folder holds the traces)")
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{task_name}.py"))
    data = load_data(source / "data")
    program = load_prompt(source / "prompt.json", task)
    folder = RUNS / "lora-epochs" / task_name / f"s{seed}" / f"{step}-{recipe}"
    shutil.rmtree(folder, ignore_errors=True)
    autoprompt.configure_cache(folder / "cache")  # empty: the cell scores with its own cache
    started = time.monotonic()
    tuned = LoRAFinetuner(seed=seed, progress=False, **RECIPES[recipe]).finetune(data, folder / "model")
    train_seconds = time.monotonic() - started
    settings = reference["settings"]
    scores = {}
    with dspy.context(lm=tuned.lm(), adapter=autoprompt.CompactJSONAdapter()):
        for split in ("dev", "test"):
            e = evaluate_program(program, task, split, limit=settings[f"{split}_limit"], progress=False)
            scores[split] = {"score": e.score, "n": e.n, "parse_failures": e.parse_failures, "errors": e.errors}
    m = tuned.metrics
    ref = reference["details"]["finetune"]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, dump_json({
        "task": task_name, "seed": seed, "step": step, "recipe": recipe, "options": RECIPES[recipe],
        "train_rows": len(data.train), "val_rows": len(data.val), "scores": scores,
        "finetune_seconds": round(train_seconds, 1),
        "finetune": {k: m.get(k) for k in ("steps", "planned_steps", "best", "evals", "epochs", "tokens_per_second",
                                            "train_seconds", "validation_seconds", "train_tokens", "dtype")},
        "reference": {"code": reference["code"], "scores": {s: reference["scores"][s]["score"] for s in scores},
                      "finetune_seconds": ref.get("seconds"), "steps": ref.get("steps"), "epochs": ref.get("epochs"),
                      "best": ref.get("best"), "tokens_per_second": ref.get("tokens_per_second")},
        "code": code_version(), "cache": "own LM cache, empty at its start", "command": command,
    }))
    shutil.rmtree(folder, ignore_errors=True)  # the adapter is not needed once scored
    print(f"{task_name} s{seed} {step} {recipe}: dev {100 * scores['dev']['score']:.1f} test "
          f"{100 * scores['test']['score']:.1f} ({train_seconds / 60:.1f} min fine-tuning); reference "
          f"{100 * reference['scores']['test']['score']:.1f} test", flush=True)


def report() -> str:
    from autoprompt.finetune import LoRAFinetuner

    cells = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*/s*/*.json"))]
    batch = LoRAFinetuner(progress=False).batch_size  # no recipe changes it: steps per epoch
    rows = []
    for c in cells:
        ref, f = c["reference"], c["finetune"]
        per_epoch = -(-c["train_rows"] // batch)
        for name, steps, best, dev, test, seconds, speed in (
                (f"default ({ref['code']})", ref["steps"], ref["best"], ref["scores"]["dev"], ref["scores"]["test"],
                 ref["finetune_seconds"], ref["tokens_per_second"]),
                (f"{c['recipe']}: {c['options']} ({c['code']})", f["steps"], f["best"], c["scores"]["dev"]["score"],
                 c["scores"]["test"]["score"], c["finetune_seconds"], f["tokens_per_second"])):
            rows.append([c["task"], str(c["seed"]), c["step"], str(c["train_rows"]), name,
                         f"{steps} ({steps / per_epoch:.2f} epochs), best {(best or {}).get('step')}",
                         f"{100 * dev:.1f}", f"{100 * test:.1f}", f"{(seconds or 0) / 60:.1f}", f"{speed:.0f}"])
    notes = ("A finished BetterTogether `w` step's traces (its `data/` folder) trained again with the same seed and "
             "another LoRA recipe; the step's program scored on the new adapter (the benchmark's dev and test "
             "rows: sentiment 200 / 436, banking77 154 / 231), each cell with its own empty LM cache. 'default' = the step's own cell in "
             "`better_together.md` (the default recipe, same data and seed; the commit it ran). 'fine-tune min' "
             "includes the validation points (decoding the held-back traces with the served adapter); the refits "
             "ran on a machine of another speed than the reference (tokens/s beside it), so compare steps, "
             "not minutes. 'best' = the validation point whose checkpoint was kept (on banking77 `w`, 17 held-back "
             "traces choose it). 'again' is the default recipe refit on the day of the other refits: it reproduced "
             "its reference's validation points and scores exactly (the fit is deterministic), so its minutes "
             "are the ones to compare the day's other recipes with. `top_layers=N`: LoRA on the last N of the "
             "30 blocks only (1.8x the training tokens/s at 10 in `lora_speed.md`).")
    return write_markdown(HERE / "results" / "lora_epochs.md", "LoRA steps of a w step: refits of its traces",
                          notes, ["task", "seed", "step", "train rows", "recipe", "steps", "dev", "test",
                                  "fine-tune min", "tokens/s"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--steps", nargs="+", default=["w", "p-w"], help="w steps of the run (folder names)")
    parser.add_argument("--recipes", nargs="+", default=["s150"], choices=list(RECIPES))
    parser.add_argument("--report", action="store_true", help="only rebuild lora_epochs.md from the cells")
    args = parser.parse_args()
    if not args.report:
        command = "python " + " ".join(sys.argv)
        for recipe in args.recipes:
            for step in args.steps:
                run_cell(args.task, args.seed, step, recipe, command)
    print(report())


if __name__ == "__main__":
    main()
