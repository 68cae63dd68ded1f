"""BetterTogether's Table 1 in miniature: vanilla, p, w, p -> w, w -> p, p -> w -> p on the test split.

Runs every strategy (sharing prefixes) for each task and seed with the embedded SmolLM2-135M:
``p`` = autoprompt's Optuna search, ``w`` = LoRA on CPU served by llama.cpp. Writes one JSON per
task (benchmarks/results/better_together_<task>.json) and, from all of them, a markdown table and a
PNG bar chart (benchmarks/results/better_together.md / .png):

    .venv/bin/python benchmarks/better_together.py --tasks iris sentiment --seeds 0 1 2

Two tasks can run as two processes side by side on a 2-core machine; give each one thread
(``AUTOPROMPT_LLAMA_THREADS=1``, used by llama.cpp and by the LoRA trainer). The LM cache is a
fresh folder per invocation, so calls and times are real.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import autoprompt  # noqa: E402
from autoprompt.bettertogether import STRATEGIES  # noqa: E402
from autoprompt.finetune import LoRAFinetuner  # noqa: E402

RESULTS = HERE / "results"
ORDER = ["vanilla", *STRATEGIES]
# per task: split limits and the p step's search (kept small: 3 p steps and 2 LoRA runs per seed)
SETTINGS = {
    "iris": {"train_limit": None, "dev_limit": 25, "test_limit": None,
             "optimizer_options": {"n_trials": 6, "minibatches": [10], "max_dev": 25, "n_demo_sets": 3}},
    "sentiment": {"train_limit": 64, "dev_limit": 40, "test_limit": 100,
                  "optimizer_options": {"n_trials": 6, "minibatches": [10], "max_dev": 40, "n_demo_sets": 3}},
}


def from_run_dir(path: Path) -> dict:
    """A finished seed's entry rebuilt from its run directory (to resume a benchmark cut short)."""
    results = json.loads((path / "results.json").read_text())
    config = json.loads((path / "config.json").read_text())
    rows = {r["strategy"]: {"dev": r["dev"], "test": r["test"], "n": r["n"], "seconds": r["seconds"]}
            for r in results["rows"]}
    return {"seed": config["seed"], "rows": rows, "run_dir": str(path.resolve().relative_to(HERE.parent)),
            "seconds": results["seconds"],
            "w_steps": {k: s["details"] for k, s in results["steps"].items() if k.endswith("w")}}


def run_task(name: str, seeds: list[int], epochs: int, strategies: list[str], answers: str,
             earlier: list[Path]) -> dict:
    task = autoprompt.load_task(str(HERE.parent / "tasks" / f"{name}.py"))
    settings = SETTINGS[name]
    started = time.monotonic()
    runs = [from_run_dir(p) for p in earlier]
    for seed in seeds:
        t0 = time.monotonic()
        result = autoprompt.better_together(
            task, strategies, seed=seed, runs_root=RESULTS / "runs", progress=False,
            data_options={"answers": answers},
            optimizer_options=settings["optimizer_options"], train_limit=settings["train_limit"],
            dev_limit=settings["dev_limit"], test_limit=settings["test_limit"],
            finetuner=LoRAFinetuner(seed=seed, epochs=epochs, progress=False),
        )
        rows = {r["strategy"]: {"dev": r["dev"], "test": r["test"], "n": r["n"], "seconds": r["seconds"]}
                for r in result.rows()}
        runs.append({"seed": seed, "rows": rows, "run_dir": str(result.run_dir.relative_to(HERE.parent)),
                     "seconds": round(time.monotonic() - t0, 1),
                     "w_steps": {k: s.details for k, s in result.steps.items() if k.endswith("w")}})
        print(f"{name} seed {seed}: " + ", ".join(f"{k} {100 * v['test']:.1f}" for k, v in rows.items()), flush=True)
    return {"task": name, "seeds": [r["seed"] for r in runs], "settings": settings, "epochs": epochs, "runs": runs, "answers": answers,
            "command": " ".join(["python", *sys.argv]), "seconds": round(time.monotonic() - started, 1)}


def report() -> str:
    data = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("better_together_*.json"))]
    lines = [
        "# BetterTogether in miniature: embedded SmolLM2-135M, test split",
        "",
        "p = autoprompt's Optuna prompt search; w = LoRA fine-tuning on CPU on the passing train traces of "
        "the current program (demos dropped), served by llama.cpp as a GGUF adapter. Scores are accuracy "
        "% on the test split, mean over seeds (each seed re-samples the search and the LoRA initialisation).",
        "",
    ]
    for d in data:
        s = d["settings"]
        variant = "" if d.get("answers", "program") == "program" else \
            " — variant: w trains on the gold labels (answers='gold'), not on the program's own answers"
        lines += [
            f"## {d['task']}{variant}",
            "",
            f"Command: `{d['command']}`; wall time {d['seconds'] / 60:.0f} min for {len(d['seeds'])} seeds. "
            f"Limits: train {s['train_limit']}, dev {s['dev_limit']}, test {s['test_limit']} (None = whole split); "
            f"p: {s['optimizer_options']}; w: LoRA rank 8, {d['epochs']} epochs.",
            "",
            "| strategy | " + " | ".join(f"test % s{r['seed']}" for r in d["runs"]) + " | test % mean ± sd | dev % mean |",
            "|---|" + "---:|" * (len(d["runs"]) + 2),
        ]
        for strategy in ORDER:
            tests = [r["rows"][strategy]["test"] for r in d["runs"] if strategy in r["rows"]]
            devs = [r["rows"][strategy]["dev"] for r in d["runs"] if strategy in r["rows"]]
            if not tests:
                continue
            sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
            lines.append(f"| {strategy} | " + " | ".join(f"{100 * t:.1f}" for t in tests)
                         + f" | {100 * statistics.mean(tests):.1f} ± {100 * sd:.1f} | {100 * statistics.mean(devs):.1f} |")
        kept = [f"s{r['seed']} {k}: {v['training_data']['records']} examples, loss {v['finetune']['first_loss']:.2f}"
                f"->{v['finetune']['final_loss']:.3f}" for r in d["runs"] for k, v in r["w_steps"].items()]
        lines += ["", "Training data per w step: " + "; ".join(kept) + ".", ""]
    text = "\n".join(lines) + "\n"
    (RESULTS / "better_together.md").write_text(text)
    _plot(data)
    return text


def _plot(data: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(5.5 * len(data), 4), squeeze=False)
    for ax, d in zip(axes[0], data):
        order = [k for k in ORDER if any(k in r["rows"] for r in d["runs"])]
        means, sds = [], []
        for strategy in order:
            tests = [100 * r["rows"][strategy]["test"] for r in d["runs"] if strategy in r["rows"]]
            means.append(statistics.mean(tests) if tests else 0.0)
            sds.append(statistics.stdev(tests) if len(tests) > 1 else 0.0)
        ax.bar(range(len(order)), means, yerr=sds, capsize=4, color=["#999"] + ["#4c72b0"] * (len(order) - 1))
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_ylabel("test accuracy % (mean ± sd over seeds)")
        gold = ", w on gold labels" if d.get("answers") == "gold" else ""
        ax.set_title(f"{d['task']} ({len(d['seeds'])} seeds{gold})")
        ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(RESULTS / "better_together.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["iris", "sentiment"], choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="LoRA epochs per w step")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--answers", default="program", choices=["program", "gold"],
                        help="what w trains on: the program's passing answers (the paper) or the gold labels")
    parser.add_argument("--add-run-dirs", nargs="*", type=Path, default=[],
                        help="finished seeds' run directories to include (a benchmark cut short, resumed)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the table and chart from the JSON files")
    args = parser.parse_args()
    if not args.report_only:
        autoprompt.configure_cache(tempfile.mkdtemp(prefix="autoprompt-bt-cache-"))
        for name in args.tasks:
            out = run_task(name, args.seeds, args.epochs, args.strategies, args.answers, args.add_run_dirs)
            suffix = "" if args.answers == "program" else f"_{args.answers}"
            (RESULTS / f"better_together_{name}{suffix}.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(report())


if __name__ == "__main__":
    main()
