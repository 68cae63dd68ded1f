"""BetterTogether's steps: an object per letter, taking and returning the state (program + its LM).

A step is a :class:`BaseStep` with one method, ``run(state, context) -> State``. Two ship:

- :class:`PromptStep` (``"p"``): any optimizer (:func:`autoprompt.optimize`) on the state's LM.
- :class:`WeightStep` (``"w"``): the state's program runs over the train split, its passing traces
  (balanced over the labels) become training data, and a finetuner trains the *base* model on
  them; the new state is the program (demos dropped with the data) on the fine-tuned LM.

A user adds a letter by passing an object: ``better_together(task, "p -> x", steps={"x": MyStep()})``.

Example:
    >>> class Demos(BaseStep):   # a step that only drops the demos
    ...     def run(self, state, context):
    ...         program = state.program.deepcopy()
    ...         for _, p in program.named_predictors():
    ...             p.demos = []
    ...         return State(program, state.lm, details={"dropped": "demos"})
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._exceptions import ExportError, FinetuneError
from autoprompt.lms import LMSpec

__all__ = ["BaseStep", "PromptStep", "State", "StepContext", "WeightStep"]

logger = logging.getLogger(__name__)

#: a w step's default cap on program runs while tracing: this many per wanted trace (``max_traces``)
ATTEMPTS_PER_TRACE = 5


@dataclass
class State:
    """A program and the LM it runs on; ``details`` says what the step that made it did; ``scores``
    what the program is known to score on this LM (``{split: score}``; the runner passes the parent
    step's, so a step can tell whether it improved on what it was given)."""

    program: dspy.Module
    lm: LMSpec
    details: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class StepContext:
    """What a step may use: the task, its own folder (resumable work goes there), the run's settings."""

    task: Any
    folder: Path
    seed: int = 0
    progress: bool = True
    limits: dict[str, int | None] = field(default_factory=dict)
    resume: bool = False
    name: str = ""
    parent: str = ""


class BaseStep(abc.ABC):
    """One letter of a strategy. Options go to ``__init__``; ``run`` must not change ``state``."""

    @abc.abstractmethod
    def run(self, state: State, context: StepContext) -> State:
        """Return the next state. Keep what is worth keeping under ``context.folder``."""

    def options(self) -> dict[str, Any]:
        """The constructor options, as config.json records them (objects by their name)."""
        out = {}
        for k, v in vars(self).items():
            if k.startswith("_"):
                continue
            out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else \
                getattr(v, "name", type(v).__name__)
        return out


class PromptStep(BaseStep):
    """``p``: prompt optimization with any optimizer on the state's LM.

    Args:
        optimizer: an optimizer name (:data:`autoprompt.optimizers.OPTIMIZERS`) or object.
        budget: the cap of this step (LM calls or :class:`autoprompt.Budget`).
        **optimizer_options: the optimizer's constructor options (e.g. ``n_trials=8``).

    Each ``p`` searches the task's program afresh on the current LM: what earlier steps learnt is
    carried by the (fine-tuned) LM. The program it was given stays a candidate: when the search's best
    program scores below it on dev (the split the search selects on, same rows, same LM), the step
    keeps the given one (``details["kept"] = "incoming"``): a ``p`` never makes the dev score worse.
    Measured on iris seed 0: the search after ``p -> w`` returned 64% dev / 68% test where its
    incoming program had 82% / 86%. A killed ``p`` resumes its Optuna study (``context.resume``).
    """

    def __init__(self, optimizer: Any = "optuna", *, budget: Any = None, **optimizer_options: Any) -> None:
        from autoprompt.optimizers import get_optimizer

        if isinstance(optimizer, str):  # a bad name or option fails here, before the run does any work
            get_optimizer(optimizer, **optimizer_options)
        self.optimizer = optimizer
        self.budget = budget
        self.optimizer_options = optimizer_options

    def options(self) -> dict[str, Any]:
        budget = vars(self.budget) if hasattr(self.budget, "__dict__") else self.budget
        return {"optimizer": self.optimizer if isinstance(self.optimizer, str) else
                getattr(self.optimizer, "name", type(self.optimizer).__name__),
                "budget": budget, "optimizer_options": self.optimizer_options}

    def run(self, state: State, context: StepContext) -> State:
        from autoprompt.run import optimize

        run_dir = context.folder / "run"
        resume = context.resume and (run_dir / "config.json").is_file()
        if resume:
            logger.info("resuming the p step's study in %s", run_dir)
        lm: Any = state.lm if state.lm.api_key is None else state.lm.build()  # a key never reaches a file
        run = optimize(context.task, lm=lm, optimizer=self.optimizer, seed=context.seed, budget=self.budget,
                       run_dir=run_dir, resume=resume, train_limit=context.limits.get("train"),
                       dev_limit=context.limits.get("dev"), progress=context.progress, **self.optimizer_options)
        details = {"run_dir": str(run_dir.relative_to(context.folder.parent.parent)), "usage": run.usage}
        found = run.evaluations[("optimized", "dev")]
        given = state.scores.get("dev")
        if given is not None and found.score < given:
            logger.info("step %r: the search's best program scores %.4f on dev, below the %.4f of the program "
                        "step %r gave it; keeping that one", context.name, found.score, given, context.parent)
            return State(state.program, state.lm, details={**details, "kept": "incoming",
                                                           "search_dev": found.score, "incoming_dev": given})
        return State(run.program, state.lm, details={**details, "kept": "search",
                                                     "evaluations": {"dev": found}})


class WeightStep(BaseStep):
    """``w``: fine-tune the base model on the state's program's passing traces.

    Args:
        finetuner: a :class:`autoprompt.finetune.BaseFinetuner` or a name; default: LoRA on the
            local model (``LoRAFinetuner(seed=<run seed>)``); a remote LM needs one.
        max_traces: keep at most this many examples' traces (a quota per label with ``balance``);
            the program runs over the train split in a seeded order until the quotas are full.
            ``None``: the whole split.
        balance: as many traces per label as the rarest label has (see
            :func:`autoprompt.export.compile_training_data`).
        val_fraction: share of the traces held back to choose the checkpoint (validation accuracy).
        max_rounds: attempts per train example: a failing first answer is sampled again at
            temperature 1.0 up to ``max_rounds - 1`` times and the first passing answer kept (DSPy's
            bootstrap rounds). A program that answers one label for nearly every input (the 135M model
            zero-shot: "positive") passes on few examples of the other labels greedily; sampling finds
            more of them, at the price of more LM calls on those examples only.
        extra_rounds: once the split has been run, up to this many more sampled rounds for the failed
            examples of the labels short of the others, until they catch up (see
            :func:`autoprompt.export.compile_training_data`). On Iris (50 train rows) the zero-shot program
            names "setosa" for nearly every flower; 3 rounds found no right answer of another species on
            seeds 1 and 2 of the benchmark, so the step could not balance its data.
        max_attempts: stop tracing after this many program runs (sampled rounds included) and train on what
            was kept (see :func:`autoprompt.export.compile_training_data`). ``None``: ``5 x max_traces`` when
            ``max_traces`` is set (the benchmark's w steps used at most 4.3 x: 4323 runs for SST-2's 1000
            traces), else no cap. The zero-shot 135M model on Banking77 is right on ~14% of the train examples,
            few of them for most intents: without a cap its w step would run those intents' examples 4 times
            and more (hours); with it, at most 3850 runs and the intents it never answered reported missing.
        **data_options: more options of ``compile_training_data`` (``threshold``, ``keep_demos``,
            ``answers``, ``limit``, ...).
    """

    def __init__(self, finetuner: Any = None, *, max_traces: int | None = 1000, balance: bool = True,
                 val_fraction: float = 0.1, max_rounds: int = 4, extra_rounds: int = 8,
                 max_attempts: int | None = None, **data_options: Any) -> None:
        from autoprompt._options import OptionError, check_options
        from autoprompt.export import compile_training_data

        reserved = {"program", "task", "split", "progress", "source", "seed"}  # set by the step itself
        if reserved & set(data_options):
            raise OptionError(f"the w step sets {sorted(reserved & set(data_options))} itself; drop them")
        if max_traces is not None and max_traces < 1:
            raise ExportError(f"data option max_traces must be a positive integer or None, got {max_traces!r}")
        if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)
                                         or max_attempts < 1):
            raise ExportError(f"data option max_attempts must be a positive integer or None, got {max_attempts!r}")
        for name, value, low in (("max_rounds", max_rounds, 1), ("extra_rounds", extra_rounds, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:  # refused before any work
                raise ExportError(f"data option {name} must be an integer >= {low}, got {value!r}")
        if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
            raise ExportError(f"data option val_fraction must be in [0, 1), got {val_fraction!r}")
        for name in ("min_label_share", "max_label_share", "retry_calibration"):
            share = data_options.get(name, 0.0)
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                raise ExportError(f"data option {name} must be in [0, 1], got {share!r}")
        self.finetuner = finetuner
        self.max_traces = max_traces
        self.balance = balance
        self.val_fraction = val_fraction
        self.max_rounds = max_rounds
        self.extra_rounds = extra_rounds
        self.max_attempts = max_attempts
        self.data_options = data_options
        check_options(compile_training_data, {**self._named(), **data_options}, "the w step's data")

    def _named(self) -> dict[str, Any]:
        """The data options with a default of their own here (the rest pass through ``data_options``)."""
        return {"max_traces": self.max_traces, "balance": self.balance, "val_fraction": self.val_fraction,
                "max_rounds": self.max_rounds, "extra_rounds": self.extra_rounds, "max_attempts": self.max_attempts}

    def options(self) -> dict[str, Any]:
        tuner = self.finetuner
        # what decides the result (not how it is shown or how many threads run it): a resumed run compares these
        runtime = {"progress", "threads"}
        return {"finetuner": None if tuner is None else tuner if isinstance(tuner, str) else
                {"name": tuner.name, "options": {k: v for k, v in tuner.options().items() if k not in runtime}},
                **self._named(), "data_options": self.data_options}

    def finetuner_for(self, lm: LMSpec, context: StepContext) -> Any:
        """The finetuner object for ``lm`` (the default one for a local model)."""
        from autoprompt.finetune import get_finetuner

        if self.finetuner not in (None, "lora"):
            return get_finetuner(self.finetuner)
        if not lm.is_local:
            raise FinetuneError(
                f"a 'w' step on {lm.model} needs a finetuner for that provider, e.g. "
                "finetuner=autoprompt.finetune.OpenAIFinetuner('openai/<model>')"
            )
        return get_finetuner("lora", seed=context.seed, progress=context.progress, base_model=lm.base_model)

    def run(self, state: State, context: StepContext) -> State:
        from autoprompt.export import compile_training_data

        finetuner = self.finetuner_for(state.lm, context)
        options = {"limit": context.limits.get("train"), "seed": context.seed, **self.data_options,
                   **self._named()}
        if options["max_attempts"] is None and options["max_traces"] is not None:
            options["max_attempts"] = ATTEMPTS_PER_TRACE * options["max_traces"]
        with dspy.context(lm=state.lm.build(), adapter=CompactJSONAdapter()):
            data = compile_training_data(state.program, context.task, split="train", progress=context.progress,
                                         source=f"better_together step {context.name!r}: traces of the program of "
                                                f"step {context.parent!r}", **options)
        data.save(context.folder / "data", format="openai")
        tuned = finetuner.finetune(data, context.folder / "model")
        program = for_tuned_lm(state.program, keep_demos=data.manifest["options"]["keep_demos"])
        if tuned.output_dir is not None and state.lm.is_local:
            lm = state.lm.base().with_adapter(Path(tuned.lm_spec.partition("?lora=")[2]))
        else:  # a provider's fine-tuned model: its server settings (and key, in memory) carry over
            lm = LMSpec.parse(tuned.lm_spec, api_base=state.lm.api_base, api_key_env=state.lm.api_key_env,
                              api_key=tuned.lm_kwargs.get("api_key", state.lm.api_key))
        metrics = {k: v for k, v in tuned.metrics.items() if k not in ("losses",)}
        return State(program, lm, details={"training_data": data.counts, "labels": data.manifest["labels"],
                                           "finetune": metrics})


def for_tuned_lm(program: dspy.Module, *, keep_demos: bool) -> dspy.Module:
    """A copy of ``program`` to run on the LM a ``w`` step tuned on its traces: without its demos (fixed and
    per-input) unless the training data kept them (ask the tuned LM what it was trained on), and without
    what was fitted to the base model's label probabilities: a calibration's ``logit_bias`` and the
    neighbours' label prior (the tuned model learnt the answers they produced)."""
    from autoprompt._retrieval import detach
    from autoprompt._vote_prior import detach_prior

    program = program.deepcopy()
    for _, predictor in program.named_predictors():
        detach_prior(predictor)  # first: its class wraps the retrieving one (attached after it)
        if not keep_demos:
            detach(predictor)
            predictor.demos = []
        predictor.config = {k: v for k, v in predictor.config.items() if k != "logit_bias"}
    return program
