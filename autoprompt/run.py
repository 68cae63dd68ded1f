"""``optimize()``: evaluate the baseline, run an optimizer, keep everything in a run directory.

A run directory holds, each written the moment it is known::

    config.json     what was run (task, LM without secrets, optimizer and options, seed, budget)
    scores.json     baseline and optimized scores per split, LM usage, wall time
    program.json    the best program (DSPy's own save format)
    prompt.json     the best prompt (autoprompt's versioned format; see autoprompt.export)
    evaluations/    per-example answers of each scored (program, split)
    study.db        the Optuna study (optimizer "optuna")
    run.log         the log
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import dspy

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._version import __version__
from autoprompt.evaluate import Evaluation, evaluate_program
from autoprompt.export import prompt_document
from autoprompt.lms import LMSpec, build_lm, describe_lm
from autoprompt.optimizers import Context, get_optimizer, optimizer_from_config
from autoprompt.store import FORMATS, RunStore
from autoprompt.usage import Budget, Meter

__all__ = ["RUN_FORMAT_VERSION", "Result", "configure_cache", "optimize", "run_context"]

logger = logging.getLogger(__name__)

RUN_FORMAT_VERSION = FORMATS["optimize"][1]


def configure_cache(cache_dir: str | os.PathLike | None = None, *, enabled: bool = True) -> None:
    """Where DSPy's LM response cache lives: ``cache_dir``, else ``$AUTOPROMPT_CACHE_DIR``.

    With neither (and ``enabled``), DSPy's cache is left as it is (DSPy's default folder, or what the
    caller configured before): every command calls this with its ``--cache-dir``, and the variable is
    honoured by all of them alike. ``enabled=False`` turns the cache off. A rerun of the same
    optimization with the same cache answers from disk and costs no LM calls.
    """
    cache_dir = cache_dir or os.environ.get("AUTOPROMPT_CACHE_DIR")
    if not cache_dir and enabled:
        return
    kwargs: dict[str, Any] = {"enable_disk_cache": enabled, "enable_memory_cache": enabled}
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs["disk_cache_dir"] = str(cache_dir)
    dspy.configure_cache(**kwargs)


class Result:
    """What :func:`optimize` found: the best program, its scores, and the run directory.

    Attributes:
        program: the optimized program.
        baseline_program: the task's program as given (zero-shot for a plain signature).
        baseline_score, best_score: dev-split scores in [0, 1].
        evaluations: ``{("optimized" | "baseline", split): Evaluation}``.
        usage: LM calls and tokens of the optimization step.
        seconds: wall time of the whole run so far.
        run_dir: where every file of the run is (``store.path``).
        store: the run's :class:`autoprompt.store.RunStore`.
        optimizer: the optimizer object (its ``study_`` for ``optuna``).
    """

    def __init__(self, *, task, program, baseline_program, lm, adapter, store, optimizer, config, started):
        self.task = task
        self.program = program
        self.baseline_program = baseline_program
        self.lm = lm
        self.adapter = adapter
        self.store = store
        self.run_dir = store.path
        self.optimizer = optimizer
        self.config = config
        self.evaluations: dict[tuple[str, str], Evaluation] = {}
        self.usage: dict[str, Any] = {}
        self._started = started
        self.seconds = 0.0

    @property
    def baseline_score(self) -> float:
        return self.evaluations[("baseline", "dev")].score

    @property
    def best_score(self) -> float:
        return self.evaluations[("optimized", "dev")].score

    @property
    def study(self) -> Any:
        return getattr(self.optimizer, "study_", None)

    def evaluate(self, split: str = "test", *, which: str = "optimized", limit: int | None = None,
                 progress: bool = True) -> float:
        """Score the optimized (or baseline) program on a split; the score is saved to the run."""
        program = self.program if which == "optimized" else self.baseline_program
        if limit is None:
            limit = self.config["limits"].get(split)
        with dspy.context(lm=self.lm, adapter=self.adapter):
            evaluation = evaluate_program(program, self.task, split, limit=limit, progress=progress,
                                          desc=f"{which} on {split}")
        self._record(which, evaluation)
        return evaluation.score

    def _record(self, which: str, evaluation: Evaluation) -> None:
        self.evaluations[(which, evaluation.split)] = evaluation
        self.store.write_evaluation(f"{which}-{evaluation.split}", evaluation)
        self.save_scores()

    def scores(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (which, split), ev in sorted(self.evaluations.items()):
            out.setdefault(which, {})[split] = ev.to_dict()
        return out

    def save_scores(self) -> None:
        self.seconds = time.monotonic() - self._started
        self.store.write_json("scores.json", {
            "scores": self.scores(),
            "usage": self.usage,
            "seconds": round(self.seconds, 2),
        })

    def prompt(self) -> dict[str, Any]:
        """The optimized prompt as a versioned document (what ``prompt.json`` holds)."""
        meta = {
            "lm": self.config["lm"],
            "seed": self.config["seed"],
            "optimizer": self.config["optimizer"]["name"],
            "scores": {w: {s: e["score"] for s, e in d.items()} for w, d in self.scores().items()},
            "task_params": getattr(self.optimizer, "task_params_", None) or {},
        }
        return prompt_document(self.program, task=self.task, meta=meta)

    def save_program(self) -> None:
        self.store.save_program(self.program)
        self.store.write_json("prompt.json", self.prompt(), stamp=False)  # the prompt format's own stamp

    def __repr__(self) -> str:
        scores = {f"{w}/{s}": round(e.score, 4) for (w, s), e in self.evaluations.items()}
        return f"Result(task={self.task.name!r}, scores={scores}, run_dir='{self.run_dir}')"


def _lm_spec(lm: Any) -> dict[str, Any] | None:
    """The LM as an :class:`LMSpec` record (no key), or None for an LM given as an object (not saved)."""
    if isinstance(lm, LMSpec):
        return lm.to_dict()
    return LMSpec.parse(lm).to_dict() if isinstance(lm, str) or lm is None else None


def run_context(task: Any, store: RunStore, config: dict[str, Any], meter: Meter, **settings: Any) -> Context:
    """The optimizer's :class:`Context` of a run, from its config: the same for the run itself and for every
    ``autoprompt worker`` that joins it (``settings``: proposer_lm, progress, resume, worker)."""
    limits = config["limits"]
    return Context(trainset=task.examples("train", limit=limits["train"]),
                   devset=task.examples("dev", limit=limits["dev"]), seed=config["seed"], run_dir=store.path,
                   meter=meter, **settings)


def _budget(budget: Budget | int | None) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, int):
        return Budget(max_calls=budget)
    if isinstance(budget, Budget):
        return budget
    raise TypeError(f"Invalid budget argument: {budget!r}; pass a number of LM calls or autoprompt.Budget(...)")


def optimize(
    task: Any,
    *,
    lm: Any = None,
    optimizer: Any = "optuna",
    seed: int = 0,
    budget: Budget | int | None = None,
    proposer_lm: Any = None,
    run_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    resume: bool = False,
    cache_dir: str | os.PathLike | None = None,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    test_limit: int | None = None,
    progress: bool = True,
    task_options: dict[str, Any] | None = None,
    **optimizer_options: Any,
) -> Result:
    """Optimize ``task``'s program for an LM and keep the run on disk.

    Args:
        task: a :class:`autoprompt.Task` (see :func:`autoprompt.load_task`).
        lm: ``"local"`` (default: the embedded SmolLM2-135M), a model string, or a ``dspy.LM``.
        optimizer: a name from :data:`autoprompt.optimizers.OPTIMIZERS` or an optimizer object.
        seed: seeds sampling of demos, minibatches and the Optuna sampler.
        budget: cap on the optimization step: a number of LM calls or a :class:`Budget`.
        proposer_lm: a (stronger) LM for proposing instructions and bootstrapping demos.
        run_dir: the run directory (default: a new ``<runs_root>/<task>-<time>-s<seed>``).
        resume: continue the run in ``run_dir`` (its Optuna study and finished trials).
        cache_dir: DSPy's LM cache directory (see :func:`configure_cache`).
        train_limit, dev_limit, test_limit: a seeded sample of N examples of a split, stratified over
            the labels (the same sample for every seed).
        progress: show progress bars.
        **optimizer_options: passed to the optimizer's constructor (e.g. ``n_trials=8``).

    Returns:
        A :class:`Result`; ``result.evaluate("test")`` scores the test split.
    """
    started = time.monotonic()
    configure_cache(cache_dir)
    store = RunStore.open(run_dir, "optimize") if resume else None  # a bad run folder fails before any work
    if store is not None and not optimizer_options:
        # resuming with no options given: the run's own optimizer, as its config records it
        recorded = store.config["optimizer"]
        opt = optimizer_from_config(recorded) if recorded["name"] == optimizer else get_optimizer(optimizer)
    else:
        opt = get_optimizer(optimizer, **optimizer_options)
    budget = _budget(budget)
    dspy_lm = build_lm(lm)
    proposer = build_lm(proposer_lm) if proposer_lm is not None else None
    task.validate(("train", "dev"))
    if store is None:
        store = RunStore.create("optimize", path=run_dir, runs_root=runs_root, name=task.name, seed=seed)
    run_path = store.path
    config = {
        "autoprompt_version": __version__,
        "dspy_version": dspy.__version__,
        "task": {"name": task.name, "source": task.source, "options": task_options or {}},
        "lm": describe_lm(dspy_lm),
        "lm_spec": _lm_spec(lm),
        "proposer_lm": describe_lm(proposer) if proposer is not None else None,
        "optimizer": {"name": opt.name, "options": opt.options()},
        "seed": seed,
        "budget": {k: v for k, v in vars(budget).items()},
        "limits": {"train": train_limit, "dev": dev_limit, "test": test_limit},
    }
    if not resume:
        store.write_json("config.json", config)
    adapter = CompactJSONAdapter()
    baseline = task.make_program()
    result = Result(task=task, program=baseline, baseline_program=baseline, lm=dspy_lm, adapter=adapter,
                    store=store, optimizer=opt, config=config, started=started)
    with store.log():
        logger.info("run %s: task %s, lm %s, optimizer %s, seed %d", run_path, task.name, dspy_lm.model, opt.name, seed)
        result.evaluate("dev", which="baseline", limit=dev_limit, progress=progress)
        logger.info("baseline dev score %.4f", result.baseline_score)
        meter = Meter(budget)
        context = run_context(task, store, config, meter, proposer_lm=proposer, progress=progress, resume=resume)
        meter.enforcing = True
        try:
            with dspy.context(lm=dspy_lm, adapter=adapter, usage_tracker=meter):
                program = opt.compile(baseline.deepcopy(), task, context)
        finally:
            meter.enforcing = False
            result.usage = {**meter.snapshot(), "optimize_seconds": round(meter.seconds, 2),
                            "budget_exhausted": meter.exhausted()}
            result.save_scores()
        result.program = program
        result.save_program()
        result.evaluate("dev", which="optimized", limit=dev_limit, progress=progress)
        result.save_program()  # now with its dev score
        logger.info("optimized dev score %.4f (baseline %.4f)", result.best_score, result.baseline_score)
    return result
