"""Wall time of `autoprompt better-together` at its defaults, the command the BetterTogether issue's time target names.

One cell per (task, seed, strategy): the CLI runs in a subprocess exactly as a user types it
(``autoprompt better-together tasks/<task>.py --strategy S --seed N``: whole dev and test splits, the
default p budget, the default w step), with its own empty LM cache and its own empty model cache (so the
Q8_0 conversion of the embedded model is part of the time, as on a fresh machine). The cell records the
process's wall time, each step's time from the run folder's ``step.json`` files (fit = the search, or the
w step's tracing + fine-tuning + validation; the rest of a step is scoring dev and test) and the w steps'
tracing and LoRA figures. Cells land in ``benchmarks/results/bt_wall_time/`` as they finish; a rerun skips
them, and a run killed midway continues with ``--resume`` (its wall time is then the sum of the
invocations that ended; a killed one's time is not known, so the cell says it was resumed). ``--report`` rebuilds ``bt_wall_time.md`` from the cells:

    .venv/bin/python benchmarks/bt_wall_time.py --task sentiment --seed 2
    .venv/bin/python benchmarks/bt_wall_time.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from autoprompt.store import atomic_write, dump_json  # noqa: E402
from _common import code_version, write_markdown  # noqa: E402

CELLS = HERE / "results" / "bt_wall_time"
RUNS = HERE / "runs"
#: the issue's targets (minutes): the whole command, and a w step over 1000 SST-2 traces
TARGET_MINUTES = {"p -> w -> p": 30.0}
W_TARGET_MINUTES = 10.0


def cell_path(task: str, seed: int, strategy: str) -> Path:
    return CELLS / f"{task}-s{seed}-{strategy.replace(' -> ', '-')}.json"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def step_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Each finished step of the run folder: times, scores, and the w step's tracing / LoRA figures."""
    rows = []
    for path in sorted((run_dir / "steps").glob("*/step.json"), key=lambda p: p.stat().st_mtime):
        step = json.loads(path.read_text())
        row: dict[str, Any] = {"strategy": step["strategy"], "seconds": step["seconds"],
                               "fit_seconds": step["fit_seconds"],
                               "scores": {s: e.get("score") for s, e in step.get("scores", {}).items()}}
        details = step.get("details") or {}
        if "finetune" in details:
            ft = details["finetune"]
            data = details.get("training_data", {})
            row["w"] = {
                "kept": data.get("kept_examples"), "program_runs": data.get("attempts"),
                "tracing_seconds": round(step["fit_seconds"] - ft.get("seconds", 0.0), 1),
                "lora_seconds": ft.get("seconds"), "train_seconds": ft.get("train_seconds"),
                "validation_seconds": ft.get("validation_seconds"), "steps": ft.get("steps"),
                "planned_steps": ft.get("planned_steps"), "tokens_per_second": ft.get("tokens_per_second"),
                "examples": ft.get("examples"),
            }
        rows.append(row)
    return rows


def run_cell(task: str, seed: int, strategy: str) -> None:
    path = cell_path(task, seed, strategy)
    if path.is_file():
        print(f"{path.relative_to(ROOT)}: finished earlier", flush=True)
        return
    name = f"wall-{task}-s{seed}-{strategy.replace(' -> ', '-')}"
    run_dir, cache, models = RUNS / name, RUNS / f"{name}-cache", RUNS / f"{name}-models"
    progress = RUNS / f"{name}.progress.json"  # wall time of earlier, killed invocations
    before = json.loads(progress.read_text()) if progress.is_file() else {"invocations": []}
    resume = (run_dir / "config.json").is_file()
    if not resume:
        for folder in (cache, models):
            if folder.exists() and any(folder.iterdir()):
                sys.exit(f"{folder} is not empty and {run_dir} has no run: remove both to measure from a cold start")
    command = ["autoprompt", "better-together", f"tasks/{task}.py", "--strategy", strategy, "--seed", str(seed),
               "--run-dir", str(run_dir.relative_to(ROOT)), "--cache-dir", str(cache.relative_to(ROOT)),
               "--no-progress", *(["--resume"] if resume else [])]
    env = dict(os.environ, AUTOPROMPT_MODEL_CACHE=str(models))
    env.pop("AUTOPROMPT_CACHE_DIR", None)
    env.pop("AUTOPROMPT_LLAMA_QUANTIZATION", None)  # the defaults, whatever the caller's shell has
    print("$ " + shlex.join(command), flush=True)
    started = time.monotonic()
    # the invocation's wall time is saved even when it is killed mid-way (kill -9 loses only the running one)
    before["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": None})
    RUNS.mkdir(parents=True, exist_ok=True)
    atomic_write(progress, dump_json(before))
    # `python -m autoprompt` in this checkout: the code of the checkout the benchmark runs, not the installed one
    code = subprocess.run([sys.executable, "-m", "autoprompt", *command[1:]], cwd=ROOT, env=env).returncode
    before["invocations"][-1]["seconds"] = round(time.monotonic() - started, 1)
    atomic_write(progress, dump_json(before))
    if code != 0:
        sys.exit(f"{shlex.join(command)} exited {code}; rerun this script to resume it")
    seconds = [i["seconds"] for i in before["invocations"]]
    cell = {
        "task": task, "seed": seed, "strategy": strategy, "command": shlex.join(command[:7]),
        "benchmark": shlex.join(["python", "benchmarks/bt_wall_time.py", *sys.argv[1:]]),
        "wall_seconds": round(sum(s for s in seconds if s is not None), 1), "invocations": len(seconds),
        "resumed": len(seconds) > 1 or None in seconds, "steps": step_rows(run_dir), "code": code_version(),
        "cache": "own empty LM cache and own empty model cache (the Q8_0 conversion included)",
        "threads": os.cpu_count(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, dump_json(cell))
    print(f"{path.relative_to(ROOT)}: {cell['wall_seconds'] / 60:.1f} min", flush=True)


def report() -> None:
    cells = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*.json"))]
    rows = []
    for c in cells:
        target = TARGET_MINUTES.get(c["strategy"])
        verdict = "" if target is None else (" (<= %g: %s)" % (target, "met" if c["wall_seconds"] / 60 <= target
                                                              else "NOT met"))
        for i, s in enumerate(c["steps"]):
            w = s.get("w")
            rows.append([
                c["task"] if i == 0 else "", f"s{c['seed']}" if i == 0 else "",
                (f"**{c['wall_seconds'] / 60:.1f}**{verdict}" + (" resumed" if c["resumed"] else "")) if i == 0 else "",
                s["strategy"], _minutes(s["seconds"]), _minutes(s["fit_seconds"]),
                "-" if s["scores"].get("dev") is None else f"{100 * s['scores']['dev']:.1f}",
                "-" if s["scores"].get("test") is None else f"{100 * s['scores']['test']:.1f}",
                "-" if not w else (f"{w['kept']} traces from {w['program_runs']} program runs: tracing "
                                   f"{_minutes(w['tracing_seconds'])}, LoRA {_minutes(w['lora_seconds'])} (training "
                                   f"{_minutes(w['train_seconds'])}, {w['steps']} of {w['planned_steps']} steps at "
                                   f"{w['tokens_per_second']} tokens/s; validation {_minutes(w['validation_seconds'])})"),
                c["code"] if i == 0 else "",
            ])
    notes = (
        "Each cell is one `autoprompt better-together` process at its defaults (whole dev and test splits, the "
        "default p search, the default w step: up to 1000 balanced traces, LoRA with decoded validation), with "
        "its own empty LM cache and model cache (the Q8_0 conversion of the embedded model included), alone on "
        f"this {cells[0]['threads'] if cells else 2}-core machine. 'wall' is the process's time; a step's 'min' "
        "includes scoring dev and test; 'fit' is the step before its scoring (p: the search, whose last act "
        "scores its winner on the whole dev split, reused as the step's dev score, so only test is scored after it; "
        "w: tracing (the program's runs, plus preparing the base model for training on first use), fine-tuning and "
        "validation). "
        "The vanilla step is the zero-shot program scored. Targets (issue 8): the command <= 30 min; a w step over "
        f"1000 SST-2 traces <= {W_TARGET_MINUTES:g} min. Cells: "
        + "; ".join(f"`{c['command']}` (by `{c.get('benchmark', 'benchmarks/bt_wall_time.py')}`)" for c in cells)
        + ".")
    write_markdown(HERE / "results" / "bt_wall_time.md", "`autoprompt better-together` at its defaults: wall time",
                   notes, ["task", "seed", "wall min", "step", "step min", "fit min", "dev", "test", "w step",
                           "code"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--seed", type=int, nargs="+", default=[2])
    parser.add_argument("--strategy", default="p -> w -> p")
    parser.add_argument("--report", action="store_true", help="only rebuild the markdown from the cells")
    args = parser.parse_args()
    if not args.report:
        for seed in args.seed:
            run_cell(args.task, seed, args.strategy)
    report()


if __name__ == "__main__":
    main()
