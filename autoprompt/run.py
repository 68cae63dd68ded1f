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

import contextlib
import datetime as _dt
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import dspy

from autoprompt._exceptions import RunError
from autoprompt._version import __version__
from autoprompt.evaluate import Evaluation, evaluate_program
from autoprompt.export import dump_json, prompt_document
from autoprompt.lms import build_lm, describe_lm
from autoprompt.optimizers import Context, get_optimizer, optimizer_from_config
from autoprompt.usage import Budget, Meter

__all__ = ["RUN_FORMAT_VERSION", "Result", "configure_cache", "log_to", "new_run_dir", "optimize", "write_json"]

logger = logging.getLogger(__name__)

RUN_FORMAT_VERSION = 1


def configure_cache(cache_dir: str | os.PathLike | None = None, *, enabled: bool = True) -> None:
    """Where DSPy's LM response cache lives (default: ``$AUTOPROMPT_CACHE_DIR`` or DSPy's default).

    A rerun of the same optimization with the same cache answers from disk and costs no LM calls.
    """
    cache_dir = cache_dir or os.environ.get("AUTOPROMPT_CACHE_DIR")
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
        run_dir: where every file of the run is.
        optimizer: the optimizer object (its ``study_`` for ``optuna``).
    """

    def __init__(self, *, task, program, baseline_program, lm, adapter, run_dir, optimizer, config, started):
        self.task = task
        self.program = program
        self.baseline_program = baseline_program
        self.lm = lm
        self.adapter = adapter
        self.run_dir = Path(run_dir)
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
        folder = self.run_dir / "evaluations"
        folder.mkdir(exist_ok=True)
        with open(folder / f"{which}-{evaluation.split}.jsonl", "w") as f:
            for record in evaluation.records:
                f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self.save_scores()

    def scores(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for (which, split), ev in sorted(self.evaluations.items()):
            out.setdefault(which, {})[split] = ev.to_dict()
        return out

    def save_scores(self) -> None:
        self.seconds = time.monotonic() - self._started
        write_json(self.run_dir / "scores.json", {
            "format_version": RUN_FORMAT_VERSION,
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
        self.program.save(str(self.run_dir / "program.json"))
        write_json(self.run_dir / "prompt.json", self.prompt())

    def __repr__(self) -> str:
        scores = {f"{w}/{s}": round(e.score, 4) for (w, s), e in self.evaluations.items()}
        return f"Result(task={self.task.name!r}, scores={scores}, run_dir='{self.run_dir}')"


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write a versioned JSON document atomically (temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_json(document))
    tmp.replace(path)  # atomic: a killed run never leaves half a file


@contextlib.contextmanager
def log_to(run_dir: Path) -> Iterator[None]:
    """Append autoprompt's INFO log to ``run_dir/run.log`` inside the block."""
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("autoprompt")
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _lm_spec(lm: Any) -> str | None:
    """The ``lm=`` string that rebuilds the run's LM alone (None when a server or key is involved)."""
    from autoprompt.lms import LMSpec

    if isinstance(lm, LMSpec):
        return str(lm) if lm.api_base is None and lm.api_key_env is None and not lm.kwargs else None
    return lm if isinstance(lm, str) or lm is None else None


def _budget(budget: Budget | int | None) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, int):
        return Budget(max_calls=budget)
    if isinstance(budget, Budget):
        return budget
    raise TypeError(f"Invalid budget argument: {budget!r}; pass a number of LM calls or autoprompt.Budget(...)")


def new_run_dir(task_name: str, seed: int, runs_root: str | os.PathLike) -> Path:
    """A new ``<runs_root>/<task>-<time>-s<seed>`` folder (suffixed when the name is taken)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(runs_root) / f"{task_name}-{stamp}-s{seed}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    path.mkdir(parents=True)
    return path


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
    if cache_dir is not None or os.environ.get("AUTOPROMPT_CACHE_DIR"):
        configure_cache(cache_dir)
    if resume and not optimizer_options and run_dir is not None and (Path(run_dir) / "config.json").is_file():
        # resuming with no options given: the run's own optimizer, as its config records it
        recorded = json.loads((Path(run_dir) / "config.json").read_text())["optimizer"]
        opt = optimizer_from_config(recorded) if recorded["name"] == optimizer else get_optimizer(optimizer)
    else:
        opt = get_optimizer(optimizer, **optimizer_options)
    budget = _budget(budget)
    dspy_lm = build_lm(lm)
    proposer = build_lm(proposer_lm) if proposer_lm is not None else None
    task.validate(("train", "dev"))
    if resume:
        if run_dir is None or not (Path(run_dir) / "config.json").is_file():
            raise RunError(f"cannot resume: {run_dir!r} is not a run directory (it has no config.json)")
        run_path = Path(run_dir)
    elif run_dir is not None:
        run_path = Path(run_dir)
        if (run_path / "config.json").exists():
            raise RunError(f"{run_path} already holds a run; pass resume=True (CLI: --resume) or a new directory")
        run_path.mkdir(parents=True, exist_ok=True)
    else:
        run_path = new_run_dir(task.name, seed, runs_root)
    config = {
        "format_version": RUN_FORMAT_VERSION,
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
        write_json(run_path / "config.json", config)
    adapter = dspy.JSONAdapter()
    baseline = task.make_program()
    result = Result(task=task, program=baseline, baseline_program=baseline, lm=dspy_lm, adapter=adapter,
                    run_dir=run_path, optimizer=opt, config=config, started=started)
    with log_to(run_path):
        logger.info("run %s: task %s, lm %s, optimizer %s, seed %d", run_path, task.name, dspy_lm.model, opt.name, seed)
        result.evaluate("dev", which="baseline", limit=dev_limit, progress=progress)
        logger.info("baseline dev score %.4f", result.baseline_score)
        meter = Meter(budget)
        context = Context(
            trainset=task.examples("train", limit=train_limit),
            devset=task.examples("dev", limit=dev_limit),
            seed=seed, run_dir=run_path, meter=meter, proposer_lm=proposer, progress=progress, resume=resume,
        )
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
