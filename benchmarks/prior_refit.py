"""The search's refit of its winner's label prior, paired: the same winner with its own fit (on the 100 dev rows
its trial read) and refitted (on those and the next 100), on the same test rows.

Reads the cells of ``benchmarks/optimizers.py`` whose search refitted its winner (``prior_refit`` in the cell) and
their run directories (``benchmarks/runs/optimizers/...``, kept by that script): the refitted program's test
scores are the cell's own; this script rebuilds the winning trial with the weight and bias the trial fitted
itself (its ``label_prior`` attribute) and scores it on the same test rows, each cell with its own empty LM cache.
One JSON per cell under ``benchmarks/results/prior_refit/`` (a rerun skips it), the table in
``benchmarks/results/prior_refit.md``.

    python benchmarks/prior_refit.py            # every refitted cell not yet paired, then the table
    python benchmarks/prior_refit.py --report   # the table only
"""

from __future__ import annotations

import argparse
import json
import logging
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

from _common import code_version, write_markdown  # noqa: E402

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from autoprompt.decision._stats import bootstrap_ci, paired_test  # noqa: E402
from autoprompt.evaluate import evaluate_program  # noqa: E402
from autoprompt.lms import build_lm  # noqa: E402
from autoprompt.store import atomic_write, dump_json  # noqa: E402

CELLS = HERE / "results" / "optimizers"
OUT = HERE / "results" / "prior_refit"
logger = logging.getLogger("benchmarks.prior_refit")


def _refitted_cells() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(CELLS.glob("*/c*/*/s*.json")):
        cell = json.loads(path.read_text())
        if cell.get("prior_refit"):
            out.append((path, cell))
    return out


def pair(path: Path, cell: dict[str, Any]) -> None:
    import optuna

    from autoprompt.optimizers.optuna import build_program, load_pool

    target = OUT / path.relative_to(CELLS)
    if target.exists():
        print(f"skip {target.relative_to(HERE)} (done)")
        return
    run_dir = ROOT / cell["run_dir"]
    study = optuna.load_study(study_name="autoprompt", storage=f"sqlite:///{run_dir / 'study.db'}")
    refit = study.user_attrs["prior_refit"]
    trial = study.trials[refit["trial"]]
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{cell['task']}.py"))
    own = build_program(task, load_pool(study), trial.params, trial.user_attrs.get("task_params", {}),
                        trial.user_attrs.get("logit_bias"), trial.user_attrs["label_prior"])
    cache = run_dir.parent / f"{run_dir.name}-own-fit-cache"
    shutil.rmtree(cache, ignore_errors=True)
    autoprompt.configure_cache(cache)
    started = time.monotonic()
    with dspy.context(lm=build_lm("local"), adapter=autoprompt.CompactJSONAdapter()):
        test = evaluate_program(own, task, "test", limit=cell["settings"]["test_limit"], progress=False)
    own_scores = [float(r["score"]) for r in test.records]
    refit_scores = cell["test_scores"]
    if len(own_scores) != len(refit_scores):
        raise SystemExit(f"{path}: {len(own_scores)} test rows now, {len(refit_scores)} in the cell")
    result = {
        "task": cell["task"], "calls": cell["calls"], "optimizer": cell["optimizer"], "seed": cell["seed"],
        "trial": refit["trial"], "trial_params": trial.params, "own_fit": trial.user_attrs["label_prior"],
        "refit": refit["label_prior"], "own_rows": refit["rows"] - refit["new_rows"], "refit_rows": refit["rows"],
        "trial_value": trial.value, "refit_cross_fitted": refit["cross_fitted"],
        "test_own_fit": test.score, "test_own_fit_interval": list(bootstrap_ci(own_scores, seed=cell["seed"])),
        "test_refit": cell["test"], "paired": paired_test(refit_scores, own_scores), "test_own_fit_scores": own_scores,
        "seconds": round(time.monotonic() - started, 1), "cache": "own LM cache, empty at its start",
        "cell_code": cell["code"], "code": code_version(), "command": "python benchmarks/prior_refit.py",
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, dump_json(result))
    print(f"{target.relative_to(HERE)}: own fit {100 * test.score:.1f}, refit {100 * cell['test']:.1f}", flush=True)


def report() -> str:
    rows, deltas = [], []
    for path in sorted(OUT.glob("*/c*/*/s*.json")):
        r = json.loads(path.read_text())
        p = r["paired"]
        deltas.append(100 * p["difference"])
        fit = lambda spec: ", ".join(f"w {v['weight']:g}, bias {v['bias'] or 0}" for v in spec.values())  # noqa: E731
        rows.append([r["task"], str(r["calls"]), r["optimizer"], str(r["seed"]), str(r["trial"]),
                     f"{fit(r['own_fit'])} ({r['own_rows']} rows)", f"{fit(r['refit'])} ({r['refit_rows']} rows)",
                     f"{100 * r['trial_value']:.1f} / {100 * r['refit_cross_fitted']:.1f}",
                     f"{100 * r['test_own_fit']:.1f}", f"{100 * r['test_refit']:.1f}",
                     f"{100 * p['difference']:+.1f} (p = {p['p_value']:.2g})", r["cell_code"]])
    notes = ("Each row: one cell of `benchmarks/optimizers.py` whose search refitted its winning prior trial "
             "(`prior_refit`), the winner scored on the same test rows with the weight and bias its trial fitted on "
             "its own dev rows and with the refit's (the cell's own test score). Cross-fitted: the trial's 10-fold "
             "score on its rows (what the search selected it by) and the refit's on all rows. Difference: refit "
             "minus own fit, exact McNemar p. Own-fit evaluations with their own empty LM cache."
             + (f" Mean difference over {len(deltas)} cells: {statistics.mean(deltas):+.1f} points." if deltas else ""))
    return write_markdown(HERE / "results" / "prior_refit.md", "The search's refit of its winner's label prior, paired",
                          notes, ["task", "calls", "side", "seed", "trial", "own fit", "refit",
                                  "cross-fitted % (own / refit)", "test % own fit", "test % refit",
                                  "refit - own (test)", "cell code"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only write the table from the finished pairs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.report:
        for path, cell in _refitted_cells():
            pair(path, cell)
    print(report())


if __name__ == "__main__":
    main()
