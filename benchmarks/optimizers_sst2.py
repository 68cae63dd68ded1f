"""Baseline vs optimized on SST-2 with the embedded model, for one or more optimizers and seeds.

Writes a markdown table (and prints it) with the command that produced it:

    .venv/bin/python benchmarks/optimizers_sst2.py --optimizers optuna --seeds 0 \
        --dev-limit 200 --test-limit 200 --max-seconds 240

Each run is a normal autoprompt run (its directory is listed in the table); the LM cache is a fresh
folder per invocation unless --cache-dir is given, so LM calls and times are real.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import autoprompt  # noqa: E402
from _common import write_markdown  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=str(HERE.parent / "tasks" / "sentiment.py"))
    parser.add_argument("--optimizers", nargs="+", default=["optuna"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--dev-limit", type=int, default=200)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=240)
    parser.add_argument("--max-calls", type=int)
    parser.add_argument("--cache-dir")
    parser.add_argument("--runs-root", default=str(HERE / "results" / "runs"))
    parser.add_argument("--out", default=str(HERE / "results" / "optimizers_sst2.md"))
    args = parser.parse_args()

    cache = args.cache_dir or tempfile.mkdtemp(prefix="autoprompt-bench-cache-")
    autoprompt.configure_cache(cache)
    task = autoprompt.load_task(args.task)
    rows = []
    started = time.monotonic()
    for name in args.optimizers:
        for seed in args.seeds:
            t0 = time.monotonic()
            result = autoprompt.optimize(
                task, optimizer=name, seed=seed, dev_limit=args.dev_limit, test_limit=args.test_limit,
                budget=autoprompt.Budget(max_calls=args.max_calls, max_seconds=args.max_seconds),
                runs_root=args.runs_root, progress=False,
            )
            base_test = result.evaluate("test", which="baseline", progress=False)
            best_test = result.evaluate("test", progress=False)
            result.save_program()
            rows.append([name, str(seed), f"{100 * result.baseline_score:.1f}", f"{100 * result.best_score:.1f}",
                         f"{100 * base_test:.1f}", f"{100 * best_test:.1f}", str(result.usage["lm_calls"]),
                         str(result.usage["tokens"]), f"{result.usage['optimize_seconds']:.0f}",
                         f"{time.monotonic() - t0:.0f}", result.run_dir.name])
            print(" | ".join(rows[-1]), flush=True)
    header = ["optimizer", "seed", "baseline dev %", "optimized dev %", "baseline test %", "optimized test %",
              "LM calls (opt.)", "tokens (opt.)", "optimize s", "run s", "run dir"]
    notes = (f"dev = first {args.dev_limit} rows of the dev split, test = first {args.test_limit} rows of the "
             f"test split; optimization budget: max_seconds={args.max_seconds}, max_calls={args.max_calls}. "
             f"Total wall time {time.monotonic() - started:.0f} s on this machine.")
    print(write_markdown(args.out, f"{Path(args.task).stem}: baseline vs optimized, embedded SmolLM2-135M", notes,
                         header, rows))


if __name__ == "__main__":
    main()
