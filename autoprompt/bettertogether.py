"""BetterTogether: alternate prompt optimization (``p``) and weight fine-tuning (``w``) on one LM.

Soylu, Potts and Khattab (EMNLP 2024) compare the strategies ``p``, ``w``, ``p -> w``, ``w -> p`` and
``p -> w -> p`` with the vanilla zero-shot program. Here a step works on the program and LM the
previous step left:

- ``p``: :func:`autoprompt.optimize` (an Optuna search by default) on the current LM. Each ``p``
  searches the task's program afresh: the fine-tuned LM is what carries earlier steps forward.
- ``w``: the current program runs over the train split on the current LM; its passing traces
  become training data (:func:`autoprompt.export.compile_training_data`, without demos by default,
  as in the paper) and the base model is fine-tuned on them (:class:`autoprompt.finetune.LoRAFinetuner`
  for the embedded model). The program keeps its instructions; its demos are dropped when the data
  dropped them, so the fine-tuned LM is asked what it was trained on.

Several strategies in one call share their common prefixes (``p``, ``p -> w`` and ``p -> w -> p``
cost one ``p``, one ``w`` and one more ``p``). Every step's program, LM, data, weights and scores
stay in the run directory::

    config.json  results.json  table.md
    steps/<strategy>/  program.json  prompt.json  step.json  evaluations/  (p: run/, w: data/ model/)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import dspy

from autoprompt._exceptions import FinetuneError, RunError
from autoprompt._version import __version__
from autoprompt.evaluate import Evaluation, evaluate_program
from autoprompt.export import compile_training_data, prompt_document
from autoprompt.lms import build_lm, describe_lm
from autoprompt.run import _log_to, _new_run_dir, _write, optimize

__all__ = ["BT_FORMAT_VERSION", "STRATEGIES", "BetterTogetherResult", "Step", "better_together", "parse_strategy"]

logger = logging.getLogger(__name__)

BT_FORMAT_VERSION = 1
#: the paper's strategies, in the order of its Table 1
STRATEGIES = ("p", "w", "p -> w", "w -> p", "p -> w -> p")
_LABELS = {
    "vanilla": "vanilla zero-shot",
    "p": "prompt optimization only (p)",
    "w": "weight optimization only (w)",
}


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """``"p -> w -> p"`` -> ``("p", "w", "p")``; raises ``ValueError`` naming the bad part."""
    parts = tuple(part.strip().lower() for part in str(strategy).split("->"))
    bad = [part for part in parts if part not in ("p", "w")]
    if not parts or bad:
        raise ValueError(
            f"invalid strategy {strategy!r}: steps are 'p' (prompt optimization) and 'w' (weight "
            f"fine-tuning) joined by '->', e.g. 'p -> w -> p'; the paper's are {list(STRATEGIES)}"
        )
    return parts


def _name(parts: Sequence[str]) -> str:
    return " -> ".join(parts) if parts else "vanilla"


@dataclass
class Step:
    """One program of a BetterTogether run and how it scored.

    Attributes:
        strategy: ``"vanilla"``, ``"p"``, ``"p -> w"``, ...
        program: the step's program.
        lm: the LM it runs on (the base LM, or a fine-tuned one).
        lm_spec: the ``lm=`` string that rebuilds ``lm`` (None when the LM was given as an object).
        evaluations: ``{split: Evaluation}``.
        details: what the step did: the ``p`` run's directory and usage, or the ``w`` step's
            training-data counts and fine-tuning metrics.
        seconds: wall time of the step (scoring included).
        path: the step's folder.
    """

    strategy: str
    program: dspy.Module
    lm: dspy.BaseLM
    lm_spec: str | None = None
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    path: Path | None = None

    def score(self, split: str) -> float | None:
        ev = self.evaluations.get(split)
        return None if ev is None else ev.score

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "lm": describe_lm(self.lm),
            "lm_spec": self.lm_spec,
            "scores": {s: e.to_dict() for s, e in sorted(self.evaluations.items())},
            "details": self.details,
            "seconds": round(self.seconds, 1),
        }


class BetterTogetherResult:
    """Every step of a :func:`better_together` run.

    Attributes:
        steps: ``{strategy: Step}`` in the order they ran, starting with ``"vanilla"``.
        strategies: the strategies asked for.
        run_dir: where everything is.
    """

    def __init__(self, *, task: Any, strategies: list[str], run_dir: Path, config: dict[str, Any]) -> None:
        self.task = task
        self.strategies = strategies
        self.run_dir = run_dir
        self.config = config
        self.steps: dict[str, Step] = {}
        self.seconds = 0.0

    def __getitem__(self, strategy: str) -> Step:
        return self.steps[_name(parse_strategy(strategy)) if strategy != "vanilla" else "vanilla"]

    @property
    def program(self) -> dspy.Module:
        """The program of the (last) strategy asked for."""
        return self.steps[self.strategies[-1]].program

    @property
    def lm(self) -> dspy.BaseLM:
        return self.steps[self.strategies[-1]].lm

    def rows(self) -> list[dict[str, Any]]:
        """One row per step run (asked for, or a prefix of one), in the order of the paper's Table 1."""
        order = ["vanilla", *STRATEGIES]
        out = []
        for name in sorted(self.steps, key=lambda n: (order.index(n) if n in order else len(order), len(n))):
            step = self.steps[name]
            out.append({
                "strategy": name,
                "label": _LABELS.get(name, name),
                **{split: step.score(split) for split in ("dev", "test")},
                "n": {split: ev.n for split, ev in step.evaluations.items()},
                "lm": step.lm.model,
                "seconds": round(step.seconds, 1),
            })
        return out

    def table(self) -> str:
        """A markdown table: strategy, dev %, test %."""
        lines = [f"| strategy ({self.task.name}) | dev % | test % |", "|---|---:|---:|"]
        for row in self.rows():
            cells = [f"{100 * row[s]:.1f}" if row[s] is not None else "-" for s in ("dev", "test")]
            lines.append(f"| {row['label']} | {cells[0]} | {cells[1]} |")
        return "\n".join(lines)

    def save(self) -> None:
        _write(self.run_dir / "results.json", {
            "format": "autoprompt.better-together",
            "format_version": BT_FORMAT_VERSION,
            "rows": self.rows(),
            "steps": {name: step.to_dict() for name, step in self.steps.items()},
            "seconds": round(self.seconds, 1),
        })
        (self.run_dir / "table.md").write_text(self.table() + "\n")

    def __repr__(self) -> str:
        scores = {r["strategy"]: (r["dev"], r["test"]) for r in self.rows()}
        return f"BetterTogetherResult(task={self.task.name!r}, scores={scores}, run_dir='{self.run_dir}')"


def better_together(
    task: Any,
    strategy: str | Sequence[str] = "p -> w -> p",
    *,
    lm: Any = None,
    optimizer: Any = "optuna",
    optimizer_options: dict[str, Any] | None = None,
    budget: Any = None,
    finetuner: Any = None,
    data_options: dict[str, Any] | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    train_limit: int | None = None,
    dev_limit: int | None = None,
    test_limit: int | None = None,
    test: bool = True,
    progress: bool = True,
) -> BetterTogetherResult:
    """Run BetterTogether strategies on ``task`` and score every step on dev (and test).

    Args:
        task: a :class:`autoprompt.Task`.
        strategy: one strategy (``"p -> w -> p"``) or several (e.g. :data:`STRATEGIES`); shared
            prefixes run once.
        lm: the base LM (default: the embedded SmolLM2-135M).
        optimizer, optimizer_options, budget: for every ``p`` step (see :func:`autoprompt.optimize`;
            ``budget`` caps each ``p`` step).
        finetuner: for every ``w`` step: a :class:`autoprompt.finetune.BaseFinetuner` or a name
            (default: ``LoRAFinetuner(seed=seed)`` on the embedded model; a remote LM needs one,
            e.g. ``OpenAIFinetuner(...)``).
        data_options: for :func:`autoprompt.export.compile_training_data` (``threshold``,
            ``keep_demos``, ``limit``, ``val_fraction``, ...).
        seed: seeds the optimizer, the data split and the LoRA initialisation.
        run_dir: the run directory (default: ``<runs_root>/<task>-bt-<time>-s<seed>``).
        train_limit, dev_limit, test_limit: use only the first N examples of a split (train_limit
            also bounds the traces compiled for ``w``).
        test: score every step on the test split too.

    Returns:
        A :class:`BetterTogetherResult`; ``result.table()`` is the paper's Table 1 in miniature.
    """
    from autoprompt.finetune import get_finetuner

    strategies = [strategy] if isinstance(strategy, str) else list(strategy)
    if not strategies:
        raise ValueError("no strategy given; pass e.g. 'p -> w -> p' or autoprompt.bettertogether.STRATEGIES")
    parsed = [parse_strategy(s) for s in strategies]
    names = [_name(p) for p in parsed]
    started = time.monotonic()
    splits = ("dev", "test") if test and task.sources.get("test") is not None else ("dev",)
    task.validate(("train", *splits))
    base_lm = build_lm(lm)
    needs_w = any("w" in p for p in parsed)
    if needs_w and finetuner is None:
        if not _is_local(base_lm):
            raise FinetuneError(
                f"a 'w' step on {base_lm.model} needs a finetuner for that provider, e.g. "
                "finetuner=autoprompt.finetune.OpenAIFinetuner('openai/<model>')"
            )
        finetuner = get_finetuner("lora", seed=seed, progress=progress, base_model=_base_path(base_lm))
    elif needs_w:
        finetuner = get_finetuner(finetuner)
    data_options = dict(data_options or {})
    data_options.setdefault("limit", train_limit)
    data_options.setdefault("seed", seed)
    path = Path(run_dir) if run_dir is not None else _new_run_dir(f"{task.name}-bt", seed, runs_root)
    if (path / "config.json").exists():
        raise RunError(f"{path} already holds a BetterTogether run; pass a new run_dir")
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "autoprompt.better-together",
        "format_version": BT_FORMAT_VERSION,
        "autoprompt_version": __version__,
        "task": {"name": task.name, "source": task.source},
        "strategies": names,
        "lm": describe_lm(base_lm),
        "optimizer": optimizer if isinstance(optimizer, str) else getattr(optimizer, "name", repr(optimizer)),
        "optimizer_options": optimizer_options or {},
        "budget": vars(budget) if hasattr(budget, "__dict__") else budget,
        "finetuner": {"name": finetuner.name, "options": finetuner.options()} if needs_w else None,
        "data_options": data_options,
        "seed": seed,
        "limits": {"train": train_limit, "dev": dev_limit, "test": test_limit},
    }
    _write(path / "config.json", config)
    result = BetterTogetherResult(task=task, strategies=names, run_dir=path, config=config)
    adapter = dspy.JSONAdapter()
    limits = {"dev": dev_limit, "test": test_limit}

    def score(step: Step) -> None:
        with dspy.context(lm=step.lm, adapter=adapter):
            for split in splits:
                if split not in step.evaluations:
                    step.evaluations[split] = evaluate_program(step.program, task, split, limit=limits[split],
                                                               progress=progress, desc=f"{step.strategy} on {split}")
        assert step.path is not None
        folder = step.path / "evaluations"
        folder.mkdir(parents=True, exist_ok=True)
        for split, ev in step.evaluations.items():
            with open(folder / f"{split}.jsonl", "w") as f:
                for record in ev.records:
                    f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        step.program.save(str(step.path / "program.json"))
        meta = {"strategy": step.strategy, "lm": describe_lm(step.lm), "seed": seed,
                "scores": {s: e.score for s, e in step.evaluations.items()}}
        _write(step.path / "prompt.json", prompt_document(step.program, task=task, meta=meta))
        _write(step.path / "step.json", step.to_dict())

    def run_step(parts: tuple[str, ...]) -> Step:
        name = _name(parts)
        if name in result.steps:
            return result.steps[name]
        t0 = time.monotonic()
        folder = path / "steps" / name.replace(" -> ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        if not parts:
            spec = lm if isinstance(lm, str) or lm is None else None
            step = Step("vanilla", task.make_program(), base_lm, lm_spec=spec, path=folder)
        else:
            parent = run_step(parts[:-1])
            logger.info("BetterTogether step %r (from %r)", name, parent.strategy)
            if parts[-1] == "p":
                # a spec when there is one, so that the p step's run directory can be reloaded alone
                run = optimize(task, lm=parent.lm_spec or parent.lm, optimizer=optimizer, seed=seed,
                               budget=budget, run_dir=folder / "run", train_limit=train_limit,
                               dev_limit=dev_limit, progress=progress, **(optimizer_options or {}))
                step = Step(name, run.program, parent.lm, lm_spec=parent.lm_spec, path=folder,
                            details={"run_dir": str(run.run_dir), "usage": run.usage})
                step.evaluations["dev"] = run.evaluations[("optimized", "dev")]
            else:
                with dspy.context(lm=parent.lm, adapter=adapter):
                    data = compile_training_data(parent.program, task, split="train", progress=progress,
                                                 source=f"better_together step {parent.strategy!r}", **data_options)
                data.save(folder / "data", format="openai")
                tuned = finetuner.finetune(data, folder / "model")
                program = parent.program.deepcopy()
                if not data.manifest["options"]["keep_demos"]:
                    for _, predictor in program.named_predictors():
                        predictor.demos = []
                spec = None if tuned.lm_kwargs else tuned.lm_spec  # remote: its key stays in memory
                details = {"training_data": data.counts,
                           "finetune": {k: v for k, v in tuned.metrics.items() if k != "losses"}}
                step = Step(name, program, tuned.lm(), lm_spec=spec, path=folder, details=details)
        score(step)
        step.seconds = time.monotonic() - t0
        _write(folder / "step.json", step.to_dict())
        result.steps[name] = step
        result.seconds = time.monotonic() - started
        result.save()
        logger.info("%s: %s", name, {s: round(e.score, 4) for s, e in step.evaluations.items()})
        return step

    with _log_to(path):
        logger.info("BetterTogether run %s: task %s, lm %s, strategies %s", path, task.name, base_lm.model, names)
        run_step(())
        for parts in parsed:
            run_step(parts)
    result.seconds = time.monotonic() - started
    result.save()
    return result


def _is_local(lm: dspy.BaseLM) -> bool:
    from autoprompt.lms import LlamaCppEngine

    return isinstance(getattr(lm, "engine", None), LlamaCppEngine)


def _base_path(lm: dspy.BaseLM) -> Path | None:
    """The GGUF file of a local LM, or None for the embedded model (its adapter spec stays short)."""
    from autoprompt.lms import smollm2_path

    path = lm.engine.model_path
    return None if path == smollm2_path() else path
