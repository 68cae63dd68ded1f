"""BetterTogether: alternate prompt optimization (``p``) and weight fine-tuning (``w``) on one LM.

Soylu, Potts and Khattab (EMNLP 2024) compare the strategies ``p``, ``w``, ``p -> w``, ``w -> p`` and
``p -> w -> p`` with the vanilla zero-shot program. A strategy is a chain of steps; a step is an
object taking and returning the state, a program and the LM it runs on (see
:mod:`autoprompt.bettertogether._steps`: :class:`PromptStep` for ``p``, :class:`WeightStep` for
``w``; pass ``steps={"x": MyStep()}`` to add a letter).

Several strategies in one call share their common prefixes (``p``, ``p -> w`` and ``p -> w -> p``
cost one ``p``, one ``w`` and one more ``p``). Every step's program, LM, data, weights and scores
stay in the run directory; a step is finished when its ``step.json`` is written, and
``resume=True`` (CLI ``--resume``) continues a killed run from there, resuming the Optuna study of
an unfinished ``p``::

    config.json  results.json  table.md  run.log
    steps/<strategy>/  program.json  prompt.json  step.json  evaluations/  (p: run/, w: data/ model/)
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import dspy

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._version import __version__
from autoprompt.bettertogether._steps import BaseStep, PromptStep, State, StepContext, WeightStep
from autoprompt.evaluate import Evaluation, evaluate_program
from autoprompt.export import prompt_document
from autoprompt.lms import LMSpec
from autoprompt.store import FORMATS, RunStore

__all__ = [
    "BT_FORMAT_VERSION",
    "STRATEGIES",
    "BaseStep",
    "BetterTogetherResult",
    "PromptStep",
    "State",
    "Step",
    "StepContext",
    "WeightStep",
    "better_together",
    "load_step",
    "parse_strategy",
]

logger = logging.getLogger(__name__)

BT_FORMAT_VERSION = FORMATS["better-together"][1]
#: the paper's strategies, in the order of its Table 1
STRATEGIES = ("p", "w", "p -> w", "w -> p", "p -> w -> p")
_LABELS = {
    "vanilla": "vanilla zero-shot",
    "p": "prompt optimization only (p)",
    "w": "weight optimization only (w)",
}


def parse_strategy(strategy: str, letters: Sequence[str] = ("p", "w")) -> tuple[str, ...]:
    """``"p -> w -> p"`` -> ``("p", "w", "p")``, ``"vanilla"`` -> ``()``; raises ``ValueError`` naming the bad part."""
    letters = tuple(letters)
    if str(strategy).strip().lower() == "vanilla":
        return ()
    parts = tuple(part.strip().lower() for part in str(strategy).split("->"))
    bad = [part for part in parts if part not in letters]
    if not parts or bad:
        known = ", ".join(repr(x) for x in letters[:-1]) + f" and {letters[-1]!r}" if len(letters) > 1 else repr(letters[0])
        raise ValueError(
            f"invalid strategy {strategy!r}: steps are {known} ('p' prompt optimization, 'w' weight "
            f"fine-tuning, others passed as steps=) joined by '->', e.g. 'p -> w -> p'; the paper's are "
            f"{list(STRATEGIES)}"
        )
    return parts


def _with_added_defaults(old: dict[str, Any], new: dict[str, Any], letters: dict[str, Any]) -> dict[str, Any]:
    """The steps a run's config recorded, with each option a later autoprompt added (absent from the record)
    filled in when the resumed step takes its default: an upgrade alone does not block ``--resume``."""
    import inspect

    out = json.loads(json.dumps(old))
    for letter, step in new.items():
        before = out.get(letter)
        if not isinstance(before, dict) or before.get("class") != step["class"]:
            continue
        defaults = {name: p.default for name, p in inspect.signature(type(letters[letter]).__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        options = before.setdefault("options", {})
        for key, value in step["options"].items():
            if key not in options and key in defaults and defaults[key] == value:
                logger.warning("resuming: step %r's option %s was not recorded (an older autoprompt); taking its "
                               "default %r", letter, key, value)
                options[key] = value
    return out


def _name(parts: Sequence[str]) -> str:
    return " -> ".join(parts) if parts else "vanilla"


@dataclass
class Step:
    """One program of a BetterTogether run and how it scored.

    Attributes:
        strategy: ``"vanilla"``, ``"p"``, ``"p -> w"``, ...
        program: the step's program.
        lm: the LM it runs on, as an :class:`autoprompt.lms.LMSpec` (``step.lm.build()``).
        evaluations: ``{split: Evaluation}``.
        details: what the step did: the ``p`` run's directory and usage, or the ``w`` step's
            training-data counts and label histogram and the fine-tuning metrics.
        seconds: wall time of the step (scoring included).
        fit_seconds: the part of ``seconds`` spent making the program and LM (a ``p`` search, a ``w``
            step's tracing and fine-tuning), before scoring them on dev and test.
        path: the step's folder.
    """

    strategy: str
    program: dspy.Module
    lm: LMSpec
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    fit_seconds: float = 0.0
    path: Path | None = None
    resumed: bool = False

    def score(self, split: str) -> float | None:
        ev = self.evaluations.get(split)
        return None if ev is None else ev.score

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "lm": self.lm.to_dict(),
            "scores": {s: e.to_dict() for s, e in sorted(self.evaluations.items())},
            "details": self.details,
            "seconds": round(self.seconds, 1),
            "fit_seconds": round(self.fit_seconds, 1),
        }


class BetterTogetherResult:
    """Every step of a :func:`better_together` run.

    Attributes:
        steps: ``{strategy: Step}`` in the order they ran, starting with ``"vanilla"``.
        strategies: the strategies asked for.
        run_dir: where everything is.
    """

    def __init__(self, *, task: Any, strategies: list[str], store: RunStore, config: dict[str, Any]) -> None:
        self.task = task
        self.strategies = strategies
        self.store = store
        self.run_dir = store.path
        self.config = config
        self.steps: dict[str, Step] = {}
        self.seconds = 0.0

    def __getitem__(self, strategy: str) -> Step:
        return self.steps[" -> ".join(p.strip().lower() for p in strategy.split("->"))]

    @property
    def program(self) -> dspy.Module:
        """The program of the (last) strategy asked for."""
        return self.steps[self.strategies[-1]].program

    @property
    def lm(self) -> LMSpec:
        return self.steps[self.strategies[-1]].lm

    def rows(self) -> list[dict[str, Any]]:
        """One row per step run (asked for, or a prefix of one), in the order of the paper's Table 1."""
        order = ["vanilla", *STRATEGIES]
        out = []
        for name in sorted(self.steps, key=lambda n: (order.index(n) if n in order else len(order), len(n), n)):
            step = self.steps[name]
            out.append({
                "strategy": name,
                "label": _LABELS.get(name, name),
                **{split: step.score(split) for split in ("dev", "test")},
                "n": {split: ev.n for split, ev in step.evaluations.items()},
                "errors": {split: ev.errors + ev.parse_failures for split, ev in step.evaluations.items()},
                "lm": str(step.lm),
                "seconds": round(step.seconds, 1),
                "fit_seconds": round(step.fit_seconds, 1),
            })
        return out

    def table(self) -> str:
        """A markdown table: strategy, dev %, test %, step wall time and the part of it before scoring."""
        lines = [f"| strategy ({self.task.name}) | dev % | test % | step s | fit s |", "|---|---:|---:|---:|---:|"]
        for row in self.rows():
            cells = [f"{100 * row[s]:.1f}" if row[s] is not None else "-" for s in ("dev", "test")]
            lines.append(f"| {row['label']} | {cells[0]} | {cells[1]} | {row['seconds']:.0f} "
                         f"| {row['fit_seconds']:.0f} |")
        return "\n".join(lines)

    def save(self) -> None:
        self.store.write_json("results.json", {
            "rows": self.rows(),
            "steps": {name: step.to_dict() for name, step in self.steps.items()},
            "seconds": round(self.seconds, 1),
        })
        self.store.write_text("table.md", self.table() + "\n")

    def __repr__(self) -> str:
        scores = {r["strategy"]: (r["dev"], r["test"]) for r in self.rows()}
        return f"BetterTogetherResult(task={self.task.name!r}, scores={scores}, run_dir='{self.run_dir}')"


def better_together(
    task: Any,
    strategy: str | Sequence[str] = "p -> w -> p",
    *,
    steps: Mapping[str, BaseStep] | None = None,
    lm: Any = None,
    optimizer: Any = "optuna",
    optimizer_options: dict[str, Any] | None = None,
    budget: Any = None,
    finetuner: Any = None,
    data_options: dict[str, Any] | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    resume: bool = False,
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
        steps: ``{letter: BaseStep}``: replaces or adds letters. Default ``p`` =
            ``PromptStep(optimizer, budget=budget, **optimizer_options)``, ``w`` =
            ``WeightStep(finetuner, **data_options)``.
        lm: the base LM: ``"local"`` (default), an ``lm=`` string or an :class:`LMSpec`.
        optimizer, optimizer_options, budget: for the default ``p`` step (``budget`` caps each ``p``).
        finetuner: for the default ``w`` step: a :class:`autoprompt.finetune.BaseFinetuner` or a name
            (default: LoRA on the embedded model; a remote LM needs one, e.g. ``OpenAIFinetuner``).
        data_options: for the default ``w`` step (``max_traces``, ``balance``, ``val_fraction``,
            ``threshold``, ``keep_demos``, ``answers``, ...; see :class:`WeightStep`).
        seed: seeds the optimizer, the trace sampling and the LoRA initialisation.
        run_dir: the run directory (default: ``<runs_root>/<task>-bt-<time>-s<seed>``).
        resume: continue the run in ``run_dir``: finished steps are loaded, not recomputed.
        train_limit, dev_limit, test_limit: a seeded label-stratified sample of N examples of a
            split (the same sample for every seed); train_limit bounds the traces of ``w`` too.
        test: score every step on the test split too.

    Returns:
        A :class:`BetterTogetherResult`; ``result.table()`` is the paper's Table 1 in miniature.
    """
    letters = {"p": PromptStep(optimizer, budget=budget, **(optimizer_options or {})),
               "w": WeightStep(finetuner, **(data_options or {})), **(steps or {})}
    for letter, step in letters.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", letter) or not isinstance(step, BaseStep):
            raise TypeError(f"steps[{letter!r}] must be a BaseStep under a lower-case letter, got {step!r}")
    strategies = [strategy] if isinstance(strategy, str) else list(strategy)
    if not strategies:
        raise ValueError("no strategy given; pass e.g. 'p -> w -> p' or autoprompt.bettertogether.STRATEGIES")
    parsed = [parse_strategy(s, tuple(letters)) for s in strategies]
    names = [_name(p) for p in parsed]
    started = time.monotonic()
    splits = ("dev", "test") if test and task.sources.get("test") is not None else ("dev",)
    task.validate(("train", *splits))
    base = LMSpec.parse(lm) if not isinstance(lm, dspy.BaseLM) else None
    if base is None:
        raise TypeError("better_together needs an lm= string or an autoprompt.lms.LMSpec (a step rebuilds "
                        "its LM from it), not a dspy.LM object")
    for letter in {x for p in parsed for x in p}:  # a w on an LM no finetuner serves: refused before any work
        if isinstance(letters[letter], WeightStep):
            letters[letter].finetuner_for(base, StepContext(task, Path("."), seed=seed, progress=progress))
    store = RunStore.open(run_dir, "better-together") if resume else \
        RunStore.create("better-together", path=run_dir, runs_root=runs_root, name=f"{task.name}-bt", seed=seed)
    path = store.path
    limits = {"train": train_limit, "dev": dev_limit, "test": test_limit}
    config = {
        "autoprompt_version": __version__,
        "task": {"name": task.name, "source": task.source},
        "strategies": names,
        "lm": base.to_dict(),
        "steps": {k: {"class": f"{type(v).__module__}.{type(v).__qualname__}", "options": v.options()}
                  for k, v in sorted(letters.items())},
        "seed": seed,
        "limits": limits,
        "limit_sampling": "seeded (0), stratified over the labels",
    }
    if resume:
        recorded = {"steps": _with_added_defaults(store.config.get("steps", {}), config["steps"], letters)}
        store.check_resume(config, ("task", "lm", "seed", "limits", "steps"), recorded)
    store.write_json("config.json", config)
    result = BetterTogetherResult(task=task, strategies=names, store=store, config=config)

    def run(parts: tuple[str, ...]) -> Step:
        name = _name(parts)
        if name in result.steps:
            return result.steps[name]
        step_store = store.child(Path("steps") / name.replace(" -> ", "-"))
        folder = step_store.path
        if resume and step_store.exists("step.json"):
            step = load_step(step_store, task)
            logger.info("BetterTogether step %r: finished earlier, loaded from %s", name, folder)
        else:
            parent = run(parts[:-1]) if parts else None
            t0 = time.monotonic()  # after the parent: a step's time is its own
            if parent is None:
                state = State(task.make_program(), base)
            else:
                logger.info("BetterTogether step %r (from %r)", name, parent.strategy)
                context = StepContext(task, folder, seed=seed, progress=progress, limits=limits, resume=resume,
                                      name=name, parent=parent.strategy)
                given = State(parent.program, parent.lm, scores={k: e.score for k, e in parent.evaluations.items()})
                state = letters[parts[-1]].run(given, context)
            evaluations = state.details.pop("evaluations", {}) if state.details else {}
            step = Step(name, state.program, state.lm, evaluations=dict(evaluations),
                        details=state.details, path=folder, fit_seconds=time.monotonic() - t0)
            _score(step, step_store, task, splits, limits, progress)
            step.seconds = time.monotonic() - t0
            step_store.write_json("step.json", step.to_dict(), sub="step")  # last: the step is finished
        result.steps[name] = step
        result.seconds = time.monotonic() - started
        result.save()
        logger.info("%s: %s", name, {s: round(e.score, 4) for s, e in step.evaluations.items()})
        return step

    with store.log():
        logger.info("BetterTogether run %s: task %s, lm %s, strategies %s%s", path, task.name, base, names,
                    " (resumed)" if resume else "")
        run(())
        for parts in parsed:
            run(parts)
    result.seconds = time.monotonic() - started
    result.save()
    return result


def _score(step: Step, store: RunStore, task: Any, splits: Sequence[str], limits: dict[str, int | None],
           progress: bool) -> None:
    """Score the step on every split it lacks, and write its program, prompt and answers."""
    assert step.path is not None
    with dspy.context(lm=step.lm.build(), adapter=CompactJSONAdapter()):
        for split in splits:
            if split not in step.evaluations:
                step.evaluations[split] = evaluate_program(step.program, task, split, limit=limits[split],
                                                           progress=progress, desc=f"{step.strategy} on {split}")
    for split, ev in step.evaluations.items():
        if ev.records:
            store.write_evaluation(split, ev)
    store.save_program(step.program)
    meta = {"strategy": step.strategy, "lm": step.lm.to_dict(),
            "scores": {s: e.score for s, e in step.evaluations.items()}}
    store.write_json("prompt.json", prompt_document(step.program, task=task, meta=meta), stamp=False)


def load_step(store: RunStore, task: Any) -> Step:
    """A finished step from its folder: program, LM and scores as written (no LM call)."""
    from autoprompt.export import load_prompt

    folder = store.path
    saved = store.read_json("step.json", sub="step")
    evaluations = {s: Evaluation(**{k: v for k, v in e.items() if k != "records"})
                   for s, e in saved["scores"].items()}
    return Step(saved["strategy"], load_prompt(folder / "prompt.json", task), LMSpec.from_dict(saved["lm"]),
                evaluations=evaluations, details=saved["details"], seconds=saved["seconds"],
                fit_seconds=saved.get("fit_seconds", 0.0), path=folder,
                resumed=True)
