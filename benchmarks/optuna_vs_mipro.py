"""autoprompt's Optuna search vs DSPy's MIPROv2 run directly: same LM, same data, same LM-call budget.

    .venv/bin/python benchmarks/optuna_vs_mipro.py --seeds 0 1 2 --max-calls 400

Both sides use the embedded SmolLM2-135M through the same dspy.LM (llama.cpp, JSONAdapter with
grammar-constrained answers), the same train split, the same dev examples (first --dev-limit) to
select on, and the same cap on LM calls (cache hits are free; a fresh cache folder per invocation).
The cap is enforced by the engine for both: past it, a call raises, which MIPROv2 counts as a failed
example. Test accuracy is on the first --test-limit rows of the test split. A side that crashes is
reported as crashed, with its error, and scored as the zero-shot program it had started from.
Writes benchmarks/results/optuna_vs_mipro.md.
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

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from _common import write_markdown  # noqa: E402
from autoprompt.evaluate import evaluate_program  # noqa: E402
from autoprompt.optimizers import Context, OptunaSearch  # noqa: E402
from autoprompt.usage import Budget, Meter  # noqa: E402


def run_side(side, task, lm, seed, args, run_dir):
    meter = Meter(Budget(max_calls=args.max_calls))
    trainset = task.examples("train")
    devset = task.examples("dev", limit=args.dev_limit)
    program = task.make_program()
    error = None
    started = time.monotonic()
    meter.enforcing = True
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter(), usage_tracker=meter, max_errors=10**9):
        try:
            if side == "autoprompt optuna":
                context = Context(trainset=trainset, devset=devset, seed=seed, run_dir=run_dir, meter=meter,
                                  progress=False)
                program = OptunaSearch(n_trials=1000).compile(program, task, context)
            else:
                optimizer = dspy.MIPROv2(metric=task.dspy_metric, auto="light", num_threads=1, seed=seed,
                                         verbose=False, max_errors=10**9)
                program = optimizer.compile(program, trainset=trainset, valset=devset)
        except Exception as exc:  # reported in the table, not hidden
            error = f"{type(exc).__name__}: {str(exc)[:120]}"
            program = task.make_program()
    meter.enforcing = False
    seconds = time.monotonic() - started
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        test = evaluate_program(program, task, "test", limit=args.test_limit, progress=False)
    return [side, str(seed), f"{100 * test.score:.1f}", str(meter.calls), str(meter.tokens), f"{seconds:.0f}",
            error or "ok"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-calls", type=int, default=400)
    parser.add_argument("--dev-limit", type=int, default=100)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--out", default=str(HERE / "results" / "optuna_vs_mipro.md"))
    args = parser.parse_args()
    autoprompt.configure_cache(tempfile.mkdtemp(prefix="autoprompt-bench-cache-"))
    task = autoprompt.load_task(HERE.parent / "tasks" / "sentiment.py")
    lm = autoprompt.build_lm("local")
    rows = []
    started = time.monotonic()
    for seed in args.seeds:
        for side in ("autoprompt optuna", "DSPy MIPROv2 (auto=light)"):
            rows.append(run_side(side, task, lm, seed, args, Path(tempfile.mkdtemp(prefix="bench-run-"))))
            print(" | ".join(rows[-1]), flush=True)
    header = ["side", "seed", "test accuracy %", "LM calls", "tokens", "optimize s", "outcome"]
    notes = (f"LM-call cap {args.max_calls} per side; dev (selection) = first {args.dev_limit} dev rows; test = "
             f"first {args.test_limit} test rows. Total wall time {time.monotonic() - started:.0f} s.")
    print(write_markdown(args.out, "Optuna search vs DSPy MIPROv2, sentiment (SST-2), embedded SmolLM2-135M", notes,
                         header, rows))


if __name__ == "__main__":
    main()
