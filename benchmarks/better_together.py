"""BetterTogether's Table 1 on the embedded SmolLM2-135M: vanilla, p, w, p -> w, w -> p, p -> w -> p.

A cell is (task, seed, side, strategy). Sides:

- ``autoprompt``: :func:`autoprompt.better_together` at its defaults for ``p`` (Optuna search, capped
  at ``--calls`` LM calls per ``p``) and ``w`` (balanced passing traces of the current program,
  ``max_traces`` of them, LoRA chosen by decoded validation accuracy), sharing prefixes;
- ``gold``: the same ``w`` on the gold labels of the same number of train examples (``answers="gold"``):
  the ceiling of the fine-tuning recipe at that data size;
- ``traces-N``: ``w`` alone with ``max_traces=N`` (the data curve: test score vs number of traces);
- ``rounds-N``: every strategy with ``WeightStep(max_rounds=N)`` (``rounds-1``: traces from the program's
  greedy answers only, the recipe before sampling rounds became the default; the ablation of ``max_rounds``);
- ``calibrated``: every strategy with ``WeightStep(retry_calibration=1.0)`` (the retry rounds of tracing run
  the program with its label choice calibrated, the second one greedily: fewer program runs per kept trace);
- ``dspy``: DSPy's own ``dspy.BetterTogether`` (BootstrapFewShotWithRandomSearch + BootstrapFinetune)
  fine-tuning the same model through :func:`autoprompt.finetune.dspy_lm`, strategy p -> w -> p.

Every (task, seed, side) is one run directory under ``benchmarks/runs/`` (git-ignored) with its own
LM cache, empty when the side starts; ``better_together`` resumes it step by step, so a benchmark
cut short continues where it stopped. Each finished cell is written at once to
``benchmarks/results/better_together/<task>/s<seed>/<side>/<strategy>.json`` with everything the
report needs (scores, step wall time, the w step's label histogram and LoRA metrics); a rerun skips
finished cells. ``--report`` rebuilds ``better_together.md`` and ``.png`` from the cell files alone:

    .venv/bin/python benchmarks/better_together.py --task sentiment --seeds 0 1 2
    .venv/bin/python benchmarks/better_together.py --task sentiment --seeds 0 --sides gold traces-100 traces-300
    .venv/bin/python benchmarks/better_together.py --report
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import autoprompt  # noqa: E402
from autoprompt.bettertogether import STRATEGIES, WeightStep  # noqa: E402
from autoprompt.store import atomic_write, dump_json  # noqa: E402
from _common import code_version  # noqa: E402

RESULTS = HERE / "results"
CELLS = RESULTS / "better_together"
RUNS = HERE / "runs"
ORDER = ["vanilla", *STRATEGIES]
logger = logging.getLogger("benchmarks.better_together")

# per task: limits (a seeded label-stratified sample; None = the whole split), the p step's cap in LM
# calls, the w step's traces, the strategies and seeds of the issue
SETTINGS: dict[str, dict[str, Any]] = {
    "sentiment": {"train_limit": None, "dev_limit": 200, "test_limit": None, "calls": 600, "max_traces": 1000,
                  "strategies": list(STRATEGIES), "seeds": [0, 1, 2]},
    "iris": {"train_limit": None, "dev_limit": None, "test_limit": None, "calls": 400, "max_traces": None,
             "strategies": list(STRATEGIES), "seeds": [0, 1, 2]},
    "banking77": {"train_limit": None, "dev_limit": 154, "test_limit": 231, "calls": 600, "max_traces": 770,
                  "strategies": ["p", "w", "p -> w -> p"], "seeds": [0, 1]},
}


def cell_path(task: str, seed: int, side: str, strategy: str) -> Path:
    return CELLS / task / f"s{seed}" / side / (strategy.replace(" -> ", "-") + ".json")


def write_cell(path: Path, cell: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cell.setdefault("code", CODE_VERSION)
    atomic_write(path, dump_json(cell))  # atomic: a killed benchmark never leaves half a cell


CODE_VERSION = code_version()


def step_cell(step: Any, *, task: str, seed: int, side: str, settings: dict[str, Any], command: str) -> dict[str, Any]:
    details = {k: v for k, v in step.details.items() if k != "run_dir"}
    if "finetune" in details:
        details["finetune"] = {k: v for k, v in details["finetune"].items() if k not in ("losses",)}
    return {
        "task": task, "seed": seed, "side": side, "strategy": step.strategy,
        "scores": {s: {"score": e.score, "n": e.n, "errors": e.errors, "parse_failures": e.parse_failures}
                   for s, e in step.evaluations.items()},
        "seconds": round(step.seconds, 1), "fit_seconds": round(step.fit_seconds, 1), "details": details,
        "lm": "local" + (" + LoRA adapter" if step.lm.adapter else ""),
        "settings": settings, "command": command, "cache": "own LM cache per task, seed and side, empty at its start",
    }


def run_side(task_name: str, seed: int, side: str, strategies: list[str], command: str) -> None:
    settings = dict(SETTINGS[task_name])
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{task_name}.py"))
    run_dir = RUNS / f"{task_name}-s{seed}-{side}"
    autoprompt.configure_cache(run_dir.parent / f"{run_dir.name}-cache")
    common = {"seed": seed, "train_limit": settings["train_limit"], "dev_limit": settings["dev_limit"],
              "test_limit": settings["test_limit"], "progress": False, "budget": settings["calls"]}
    steps, wanted = None, strategies
    if side == "gold":
        steps, wanted = {"g": WeightStep(max_traces=settings["max_traces"], answers="gold")}, ["g"]
    elif side.startswith("traces-"):
        steps, wanted = {"w": WeightStep(max_traces=int(side.split("-")[1]))}, ["w"]
    elif side == "calibrated":
        steps = {"w": WeightStep(max_traces=settings["max_traces"], retry_calibration=1.0)}
    elif side.startswith("rounds-"):
        steps = {"w": WeightStep(max_traces=settings["max_traces"], max_rounds=int(side.split("-")[1]))}
    else:
        steps = {"w": WeightStep(max_traces=settings["max_traces"])}
    for strategy in wanted:
        if cell_path(task_name, seed, side, strategy).is_file():
            continue
        started = time.monotonic()
        try:
            result = autoprompt.better_together(task, strategy, steps=steps, run_dir=run_dir,
                                                resume=(run_dir / "config.json").is_file(), **common)
        except autoprompt.AutopromptError as exc:  # e.g. traces of one label: the cell records why it has no score
            write_cell(cell_path(task_name, seed, side, strategy), {
                "task": task_name, "seed": seed, "side": side, "strategy": strategy, "scores": {},
                "error": str(exc).replace(str(ROOT) + "/", ""), "seconds": round(time.monotonic() - started, 1),
                "details": {}, "settings": settings, "command": command})
            print(f"{task_name} s{seed} {side} {strategy}: {exc}", flush=True)
            continue
        for name, step in result.steps.items():
            path = cell_path(task_name, seed, side, name)
            if not path.is_file():
                write_cell(path, step_cell(step, task=task_name, seed=seed, side=side, settings=settings,
                                           command=command))
        logger.info("%s s%d %s %s: %.0f s", task_name, seed, side, strategy, time.monotonic() - started)
        print(f"{task_name} s{seed} {side} {strategy}: "
              + ", ".join(f"{k} {100 * (s.score('test') or 0):.1f}" for k, s in result.steps.items()), flush=True)


def run_dspy(task_name: str, seed: int, command: str) -> None:
    """DSPy's own BetterTogether (p -> w -> p) on the same model, fine-tuned through autoprompt's provider."""
    import dspy

    from autoprompt.evaluate import evaluate_program
    from autoprompt.finetune import dspy_lm

    path = cell_path(task_name, seed, "dspy", "p -> w -> p")
    if path.is_file():
        return
    settings = dict(SETTINGS[task_name])
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{task_name}.py"))
    run_dir = RUNS / f"{task_name}-s{seed}-dspy"
    autoprompt.configure_cache(run_dir.parent / f"{run_dir.name}-cache")
    trainset = task.examples("train", limit=settings["max_traces"] or settings["train_limit"], seed=seed)
    devset = task.examples("dev", limit=settings["dev_limit"])

    def metric(example, prediction, trace=None):
        return task.score(example, prediction)

    lm = dspy_lm()
    student = task.make_program()
    student.set_lm(lm)
    # the same budget as autoprompt's p: BFRS scores its 3 fixed candidates (zero-shot, labelled demos,
    # unshuffled bootstrap) and num_candidate_programs random ones on the whole validation set, so a p step
    # costs (3 + n) x len(devset) calls plus its bootstrapping; n is the largest that fits in settings["calls"]
    candidates = max(0, settings["calls"] // len(devset) - 3)
    optimizer = dspy.BetterTogether(
        metric,
        p=dspy.BootstrapFewShotWithRandomSearch(metric, max_bootstrapped_demos=4, max_labeled_demos=4,
                                                num_candidate_programs=candidates, num_threads=1),
        w=dspy.BootstrapFinetune(metric, train_kwargs={"seed": seed, "output_dir": str(run_dir / "lora")}),
    )
    started = time.monotonic()
    # autoprompt's adapter (grammar-constrained compact JSON), as on autoprompt's side: the comparison is of the
    # optimizers. With DSPy's ChatAdapter the 135M model rambles to max_tokens (1.6-2.2 s a call against ~0.37
    # under the JSON grammar, measured on this side's first 57 baseline rows): a run of hours.
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        compiled = optimizer.compile(student, trainset=trainset, valset=devset, strategy="p -> w -> p")
        if getattr(compiled, "flag_compilation_error_occurred", False):
            # DSPy logs a failed step and returns the best earlier candidate: that is not its p -> w -> p, and no
            # cell is written (a rerun tries again)
            done = [c["strategy"] or "vanilla" for c in compiled.candidate_programs]
            raise SystemExit(f"DSPy's BetterTogether stopped after a failed step; finished: {done} (see its log)")
        scores = {split: evaluate_program(compiled, task, split, limit=settings[f"{split}_limit"], progress=False)
                  for split in ("dev", "test")}
    write_cell(path, {
        "task": task_name, "seed": seed, "side": "dspy", "strategy": "p -> w -> p",
        "scores": {s: {"score": e.score, "n": e.n, "errors": e.errors, "parse_failures": e.parse_failures}
                   for s, e in scores.items()},
        "seconds": round(time.monotonic() - started, 1),
        "details": {"candidates": [{"strategy": c["strategy"], "dev": c["score"]} for c in compiled.candidate_programs],
                    "lm_calls": len(lm.history), "num_candidate_programs": candidates},
        "lm": "local + LoRA adapter (DSPy BootstrapFinetune)", "settings": settings, "command": command,
        "cache": "own LM cache, empty at its start",
    })


def load_cells() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(CELLS.glob("*/s*/*/*.json"))]


def report() -> str:
    cells = load_cells()
    lines = [
        "# BetterTogether on the embedded SmolLM2-135M (test accuracy %)",
        "",
        "Written by `benchmarks/better_together.py` from the cell files under `benchmarks/results/better_together/` "
        "(one per task, seed, side and strategy). p = autoprompt's Optuna prompt search capped at the LM calls "
        "given; w = LoRA on CPU on the balanced passing train traces of the current program (demos dropped), "
        "checkpoint chosen by decoded validation accuracy, served by llama.cpp as a GGUF adapter. "
        "Each side and seed ran with its own LM cache, empty when it started; within a side, a step that sends "
        "the same prompt to the same LM as an earlier step gets the cached answer (e.g. a final p that keeps the "
        "zero-shot program on the fine-tuned LM re-scores from the cache, hence its short step time). "
        "'step min' is the step's wall time including its scoring on dev and test; 'fit min' the part before "
        "scoring (the p search; the w step's tracing, fine-tuning and validation); both averaged over the seeds with a score. Sides: `autoprompt` = the "
        "defaults of the commit each cell names below (sentiment seed 0 before the small-data LoRA steps, the uncut "
        "sampling (llama.cpp's top-k 40 / min-p 0.05 were still on in its rounds), extra rounds and request-derived "
        "sampling seeds, of which only the sampling cut applies at its size; sentiment seed 1 at bffc19a, before "
        "per-input demos; iris from the commit that made per-input demos (`retrieved_demos`) a default of the p "
        "search; banking77's `p -> w` and `p -> w -> p` cells before the many-label balance rule, which keeps "
        "their traces, 10 per intent, as they were); `balance-v1` = banking77 `w` cells of the rule before it "
        "(every intent cut to the rarest one's count); `recipe-v4` = iris cells of the defaults before per-input demos (fb504f9 / e2b62b9: extra rounds "
        "for labels short of traces, sampling seeds derived from the request); `recipe-v3` = iris cells of the defaults "
        "before extra rounds and request-derived seeds (the p steps' instruction proposals depended on which model "
        "copy answered); `recipe-v2` = "
        "cells of the w recipe before early stopping, the small-data steps and the uncut sampling (sampling "
        "rounds, lr 3e-3, 2 epochs; its sentiment `p -> w` found the greedy round's answers in the side's cache, "
        "left by the `shared-seed` run in the same folder: tracing 4.9 min where the cold `autoprompt` side took "
        "11.1); `gold-v2` = gold labels with that recipe (iris: 2 epochs, 10 steps); `recipe-v1` = cells of the "
        "previous w recipe (greedy traces only, LoRA learning rate 1e-3), kept "
        "for comparison; `shared-seed` = cells of the sampling rounds as first committed (one seed per round for "
        "every example, a bug fixed since; lr 3e-3); `rounds-N` = w with max_rounds=N; `gold` = w on gold labels (the recipe's ceiling "
        "at that data size; its sentiment seed-0 cells used learning rate 1e-3); `traces-N` = w alone on N "
        "traces; `calibrated` = the defaults with `WeightStep(retry_calibration=1.0)` (tracing's retry rounds "
        "calibrated, the second greedy); `dspy` = DSPy's own `dspy.BetterTogether` p -> w -> p (p = BootstrapFewShotWithRandomSearch "
        "with as many candidate programs as fit the p cap in LM calls on the dev rows; w = BootstrapFinetune, "
        "DSPy's passing traces of max_traces train rows as they come, unbalanced, fine-tuned by autoprompt's "
        "LoRA through `autoprompt.finetune.dspy_lm`; autoprompt's CompactJSONAdapter, as on autoprompt's side, so that "
        "the optimizers differ and nothing else; the best of its candidates on dev).",
        "",
    ]
    for task in sorted({c["task"] for c in cells}):
        mine = [c for c in cells if c["task"] == task]
        s = mine[0]["settings"]
        lines += [f"## {task}", "",
                  f"Limits (seeded, label-stratified; None = whole split): train {s['train_limit']}, dev "
                  f"{s['dev_limit']}, test {s['test_limit']}; p capped at {s['calls']} LM calls; w max_traces "
                  f"{s['max_traces']}. Command: `{mine[0]['command']}`.", ""]
        seeds = sorted({c["seed"] for c in mine})
        lines += ["| side | strategy | " + " | ".join(f"test s{x}" for x in seeds) + " | test mean | dev mean | step min (mean) | fit min (mean) |",
                  "|---|---|" + "---:|" * (len(seeds) + 4)]
        keys = sorted({(c["side"], c["strategy"]) for c in mine},
                      key=lambda k: (k[0] != "autoprompt", k[0], ORDER.index(k[1]) if k[1] in ORDER else 99, k[1]))
        for side, strategy in keys:
            by_seed = {c["seed"]: c for c in mine if c["side"] == side and c["strategy"] == strategy}
            tests = [by_seed[x]["scores"]["test"]["score"] for x in seeds if x in by_seed and "test" in by_seed[x]["scores"]]
            devs = [by_seed[x]["scores"]["dev"]["score"] for x in seeds if x in by_seed and "dev" in by_seed[x]["scores"]]
            scored = [x for x in seeds if x in by_seed and not by_seed[x].get("error")]  # an error cell's time is not a step's
            mins = [by_seed[x]["seconds"] / 60 for x in scored]
            fits = [by_seed[x]["fit_seconds"] / 60 for x in scored if "fit_seconds" in by_seed[x]]
            cells_txt = [f"{100 * by_seed[x]['scores']['test']['score']:.1f}" if x in by_seed and "test" in
                         by_seed[x]["scores"] else "-" for x in seeds]
            cells_txt = [("error" if by_seed[x].get("error") else c) if x in by_seed else c
                         for x, c in zip(seeds, cells_txt)]
            ran = [x for x in seeds if x in by_seed]

            def mean(v: list[float]) -> str:  # over the seeds with a score; "(k of n)" when some stopped with an error
                if not v:
                    return "-"
                return f"{100 * statistics.mean(v):.1f}" + (f" ({len(v)} of {len(ran)})" if len(v) < len(ran) else "")

            label = "w on gold labels" if side.startswith("gold") and strategy == "g" else strategy
            lines.append(f"| {side} | {label} | " + " | ".join(cells_txt) + f" | {mean(tests)} | {mean(devs)} | "
                         f"{f'{statistics.mean(mins):.1f}' if mins else '-'} | {f'{statistics.mean(fits):.1f}' if fits else '-'} |")
        versions: dict[str, dict[str, list[int]]] = {}  # side -> commit -> seeds
        for c in mine:
            seeds_of = versions.setdefault(c["side"], {}).setdefault(c.get("code", "not recorded"), [])
            if c["seed"] not in seeds_of:
                seeds_of.append(c["seed"])
        lines += ["", "Code (the commit each cell ran; cells before fb504f9 did not record it): " + "; ".join(
            f"{side} " + ", ".join(f"{code} (s{', s'.join(map(str, sorted(sd)))})" for code, sd in sorted(by.items()))
            for side, by in sorted(versions.items()))]
        w_notes = []
        for c in sorted(mine, key=lambda c: (c["seed"], c["side"], c["strategy"])):
            ft, labels = c["details"].get("finetune"), c["details"].get("labels")
            if not ft:
                continue
            best = ft.get("best") or {}
            data = c["details"].get("training_data") or {}
            traced = (f"traced {data['examples']} train examples in {data['attempts']} program runs"
                      f"{' (stopped at max_attempts, ' + str(data['unvisited']) + ' unvisited)' if data.get('unvisited') else ''}, "
                      if data.get("attempts") else "")
            w_notes.append(
                f"- s{c['seed']} {c['side']} `{c['strategy']}`: {traced}kept {_histogram(labels.get('kept'))}, dropped "
                f"to balance {_histogram(labels.get('dropped_balance'))}, missing {_labels(labels.get('missing'))}"
                f"{', rare ' + _labels(labels['rare']) if labels.get('rare') else ''}; LoRA {ft['examples']} examples, "
                f"{ft['steps']} of {ft.get('planned_steps', ft['steps'])} steps"
                f"{' (early stop)' if ft.get('stopped_early') else ''}, best step {best.get('step')} (val acc {best.get('val_accuracy')}, base "
                f"{ft.get('val_accuracy_base')}), {ft['train_seconds'] / 60:.1f} min training at "
                f"{ft['tokens_per_second']:.0f} tokens/s ({ft['dtype']})")
        errors = [f"- s{c['seed']} {c['side']} `{c['strategy']}`: {c['error']}" for c in mine if c.get("error")]
        curve = _curve(mine, SETTINGS.get(task, {}).get("max_traces"))
        if curve:
            lines += ["", "Data curve (`w` alone, test % against the number of traces it was given: `traces-N` cells, "
                      "and the `autoprompt` side's `w` at the task's max_traces; `gold` = the same w on gold labels):",
                      "", "| traces | side | " + " | ".join(f"test s{x}" for x in seeds) + " | test mean |",
                      "|---:|---|" + "---:|" * (len(seeds) + 1)]
            for n, side, by_seed in curve:
                vals = [by_seed[x] for x in seeds if x in by_seed]
                lines.append(f"| {n} | {side} | " + " | ".join(f"{100 * by_seed[x]:.1f}" if x in by_seed else "-"
                                                            for x in seeds)
                             + f" | {100 * statistics.mean(vals):.1f}" + (f" ({len(vals)} of {len(seeds)} seeds)" if len(vals) < len(seeds)
                                                                         else "") + " |")
        if w_notes:
            lines += ["", "w steps:", "", *w_notes]
        if errors:
            lines += ["", "Cells without a score (the run stopped with this error; finished steps were kept):", "",
                      *errors]
        lines.append("")
    text = "\n".join(lines) + "\n"
    (RESULTS / "better_together.md").write_text(text)
    _plot(cells)
    return text


def _plot(cells: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in cells})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [c for c in cells if c["task"] == task and "test" in c["scores"]]
        keys = sorted({(c["side"], c["strategy"]) for c in mine},
                      key=lambda k: (k[0] != "autoprompt", k[0], ORDER.index(k[1]) if k[1] in ORDER else 99))
        means, sds, labels = [], [], []
        for side, strategy in keys:
            vals = [100 * c["scores"]["test"]["score"] for c in mine if (c["side"], c["strategy"]) == (side, strategy)]
            means.append(statistics.mean(vals))
            sds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            labels.append(strategy if side == "autoprompt" else f"{side}: w on gold labels" if strategy == "g"
                          else f"{side}: {strategy}")
        colors = ["#999" if k[1] == "vanilla" else "#4c72b0" if k[0] == "autoprompt" else "#dd8452" for k in keys]
        ax.bar(range(len(keys)), means, yerr=sds, capsize=4, color=colors)
        ax.set_xticks(range(len(keys)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("test accuracy % (mean ± sd over seeds)")
        ax.set_title(task)
        ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(RESULTS / "better_together.png", dpi=120)
    plt.close(fig)
    curves = {task: _curve([c for c in cells if c["task"] == task], SETTINGS.get(task, {}).get("max_traces"))
              for task in tasks}
    curves = {task: curve for task, curve in curves.items() if curve}
    if not curves:
        return
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8), squeeze=False)
    for ax, (task, curve) in zip(axes[0], sorted(curves.items())):
        for side, marker in (("program's traces", "o-"), ("gold labels", "s--")):
            pts = [(n, 100 * statistics.mean(by_seed.values())) for n, sd, by_seed in curve if sd == side]
            if pts:
                ax.plot(*zip(*pts), marker, label=f"w on the {side} (mean over seeds)")
            for n, sd, by_seed in curve:  # every seed's point, faint
                if sd == side:
                    ax.plot([n] * len(by_seed), [100 * v for v in by_seed.values()], marker[0], alpha=0.3, color="grey")
        ax.set_xscale("log")
        ax.set_xlabel("traces the w step trained on (max_traces)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(f"{task}: data curve of w")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "better_together_traces.png", dpi=120)
    plt.close(fig)


def _curve(cells: list[dict[str, Any]], max_traces: int | None) -> list[tuple[int, str, dict[int, float]]]:
    """``(traces, side, {seed: test score})`` for the data curve: ``traces-N`` cells' ``w``, the ``autoprompt``
    side's ``w`` (at ``max_traces``) and ``gold``'s ``g`` (gold labels, the same size); sorted by size, then side."""
    points: dict[tuple[int, str], dict[int, float]] = {}
    for c in cells:
        if "test" not in c["scores"] or c.get("error"):
            continue
        if c["side"].startswith("traces-") and c["strategy"] == "w":
            key = (int(c["side"].split("-")[1]), "program's traces")
        elif c["side"] == "autoprompt" and c["strategy"] == "w" and max_traces:
            key = (max_traces, "program's traces")
        elif c["side"] == "gold" and c["strategy"] == "g" and max_traces:
            key = (max_traces, "gold labels")
        else:
            continue
        points.setdefault(key, {})[c["seed"]] = c["scores"]["test"]["score"]
    if not any(n != max_traces for n, _ in points):  # one size only: no curve
        return []
    return [(n, side, by_seed) for (n, side), by_seed in sorted(points.items())]


def _histogram(counts: dict[str, int] | None) -> str:
    """A label histogram as the report shows it: in full up to 10 labels, else summarised (Banking77: 77)."""
    if not counts or len(counts) <= 10:
        return str(counts)
    values = sorted(counts.values())
    return (f"{sum(values)} over {len(values)} labels (min {values[0]}, median {statistics.median(values):g}, "
            f"max {values[-1]})")


def _labels(names: list[str] | None) -> str:
    names = names or []
    return str(names) if len(names) <= 10 else f"{len(names)} labels ({', '.join(names[:5])}, ...)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the task's (3 seeds; banking77 2)")
    parser.add_argument("--sides", nargs="+", default=["autoprompt"],
                        help="autoprompt, gold, dspy, calibrated, traces-N (w on N traces), rounds-N (w with max_rounds=N)")
    parser.add_argument("--strategies", nargs="+", help="default: the task's")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and chart from the cells")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.report:
        if args.task is None:
            parser.error("--task is required (or --report)")
        command = shlex.join(["python", "benchmarks/better_together.py", *sys.argv[1:]])
        for seed in args.seeds or SETTINGS[args.task]["seeds"]:
            for side in args.sides:
                if side == "dspy":
                    run_dspy(args.task, seed, command)
                else:
                    run_side(args.task, seed, side, args.strategies or SETTINGS[args.task]["strategies"], command)
    print(report())


if __name__ == "__main__":
    main()
