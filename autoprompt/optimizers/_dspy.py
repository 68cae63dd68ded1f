"""DSPy's own optimizers, run as they are: BootstrapFewShot, its random search, MIPROv2, GEPA and SIMBA.

Errors are bounded, not ignored. DSPy's own ``max_errors`` counts unparsable answers and LM errors
together, and an exhausted LM budget would count too, so it stays lifted; autoprompt counts the LM
calls that fail (a DSPy callback: transport and server errors, not the small LM's unparsable answers,
not the budget's stop) and ends the run with one :class:`LMError` when they pass ``max_errors``
(default: half the examples the optimizer may run, train + dev, at least 10). A server that stops
answering ends the run instead of scoring every candidate 0.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from autoprompt._exceptions import AutopromptError, BudgetExhausted, LMError, causes, find_cause
from autoprompt.optimizers._base import BaseOptimizer, Context

__all__ = ["GEPA", "SIMBA", "BootstrapFewShot", "MIPROv2", "RandomSearch"]

logger = logging.getLogger(__name__)



_NO_ERROR_CAP = 10**9


def error_budget(max_errors: int | None, context: Context) -> int:
    """The LM errors a DSPy optimizer may meet before the run stops: ``max_errors``, else half of train + dev
    (at least 10)."""
    if max_errors is not None:
        return max_errors
    return max(10, (len(context.trainset) + len(context.devset)) // 2)


class _LMErrors(BaseCallback):
    """Counts LM calls that end in an error other than the budget's stop (DSPy callbacks cannot raise)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None
        self._lock = threading.Lock()

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        if exception is None or find_cause(exception, BudgetExhausted) is not None:
            return
        with self._lock:
            self.count += 1
            self.last = f"{type(exception).__name__}: {exception}"
        if self.count <= 3:
            logger.warning("LM error during the DSPy optimizer (%d so far): %s", self.count, self.last)


def _compile(name: str, budget: int, run: Any) -> dspy.Module:
    """Run a DSPy optimizer, counting its LM errors; past ``budget`` of them the run ends with one LMError."""
    counter = _LMErrors()
    try:
        with dspy.context(max_errors=_NO_ERROR_CAP, callbacks=[*dspy.settings.callbacks, counter]):
            program = run()
    except AutopromptError:
        raise
    except Exception as exc:
        if counter.count > budget or (_is_lm_failure(exc) and find_cause(exc, BudgetExhausted) is None):
            raise LMError(f"DSPy's {name} stopped: {type(exc).__name__}: {exc}; {counter.count} LM errors, last "
                          f"{counter.last}. Check the LM (see run.log)") from exc
        raise
    if counter.count > budget:
        raise LMError(f"DSPy's {name}: {counter.count} LM calls failed (more than max_errors={budget}); last "
                      f"{counter.last}. Its result would measure the LM server: check the LM, or raise the budget "
                      "with --option max_errors=N")
    return program


def _is_lm_failure(exc: BaseException) -> bool:
    """An LM call or answer that failed (what DSPy re-raises, or its parallel executor's "cancelled")."""
    from dspy.utils.exceptions import AdapterParseError

    for cause in causes(exc):
        module = type(cause).__module__.split(".")[0]
        if isinstance(cause, (AdapterParseError, LMError, ConnectionError, TimeoutError)) or \
                module in ("litellm", "openai", "httpx", "httpcore") or "Execution cancelled due to errors" in str(cause):
            return True
    return False


def seeded_trainset(context: Context) -> list:
    """The train split in the order ``context.seed`` gives it, for DSPy optimizers that take no seed
    (``BootstrapFewShot``, ``BootstrapFewShotWithRandomSearch``: their draws use fixed ``random.Random(0)``
    and candidate seeds, so the order of the trainset is their only source of variation). Seed 0 keeps the
    split's own order: the same run as DSPy's optimizer called directly."""
    trainset = list(context.trainset)
    if context.seed:
        random.Random(context.seed).shuffle(trainset)
    return trainset


class _DSPyOptimizer(BaseOptimizer):
    """A DSPy optimizer run by name: its LM errors counted and bounded by ``max_errors``
    (:func:`error_budget`), its program compiled from a copy. Subclasses give ``dspy_name`` and
    :meth:`run` (the DSPy call)."""

    dspy_name = ""
    max_errors: int | None = None

    def compile(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        return _compile(self.dspy_name, error_budget(self.max_errors, context),
                        lambda: self.run(program.deepcopy(), task, context))

    def run(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        raise NotImplementedError


class BootstrapFewShot(_DSPyOptimizer):
    """DSPy's BootstrapFewShot: demos are the program's own traces that pass the metric (the run's seed
    orders the trainset: :func:`seeded_trainset`)."""

    name = "bootstrap"
    dspy_name = "BootstrapFewShot"

    def __init__(self, max_bootstrapped_demos: int = 4, max_labeled_demos: int = 4, max_rounds: int = 1,
                 max_errors: int | None = None) -> None:
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds
        self.max_errors = max_errors

    def run(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        optimizer = dspy.BootstrapFewShot(
            metric=task.dspy_metric,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            max_errors=_NO_ERROR_CAP,
        )
        return optimizer.compile(program, trainset=seeded_trainset(context))


class RandomSearch(_DSPyOptimizer):
    """DSPy's BootstrapFewShotWithRandomSearch: several bootstrapped demo sets, the best on dev wins (the
    run's seed orders the trainset: :func:`seeded_trainset`)."""

    name = "random-search"
    dspy_name = "BootstrapFewShotWithRandomSearch"

    def __init__(
        self, num_candidate_programs: int = 6, max_bootstrapped_demos: int = 4, max_labeled_demos: int = 4,
        max_errors: int | None = None,
    ) -> None:
        self.num_candidate_programs = num_candidate_programs
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_errors = max_errors

    def run(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=task.dspy_metric,
            num_candidate_programs=self.num_candidate_programs,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            num_threads=1,
            max_errors=_NO_ERROR_CAP,
        )
        return optimizer.compile(program, trainset=seeded_trainset(context), valset=context.devset)


class MIPROv2(_DSPyOptimizer):
    """DSPy's MIPROv2 (instructions + demos by Bayesian optimization), with ``auto`` presets.

    A weak LM can fail in MIPROv2's instruction-proposal step; pass ``proposer_lm`` to
    :func:`autoprompt.optimize` to propose with a stronger LM, or use ``optimizer="optuna"``, which
    skips candidates the LM cannot produce.
    """

    name = "mipro"
    dspy_name = "MIPROv2"

    def __init__(
        self,
        auto: str | None = "light",
        num_candidates: int | None = None,
        num_trials: int | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        minibatch_size: int = 35,
        max_errors: int | None = None,
    ) -> None:
        self.max_errors = max_errors
        self.auto = auto
        self.num_candidates = num_candidates
        self.num_trials = num_trials
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.minibatch_size = minibatch_size

    def run(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        optimizer = dspy.MIPROv2(
            metric=task.dspy_metric,
            prompt_model=context.proposer_lm,
            auto=self.auto,
            num_candidates=self.num_candidates,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            num_threads=1,
            max_errors=_NO_ERROR_CAP,
            seed=context.seed,
            verbose=False,
        )
        kwargs: dict[str, Any] = {}
        if self.num_trials is not None:
            kwargs["num_trials"] = self.num_trials
        return optimizer.compile(
            program,
            trainset=context.trainset,
            valset=context.devset,
            minibatch=len(context.devset) > self.minibatch_size,
            minibatch_size=min(self.minibatch_size, len(context.devset)),
            **kwargs,
        )

    def compile(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        try:
            return super().compile(program, task, context)
        except AutopromptError:
            raise
        except Exception as exc:
            raise AutopromptError(
                f"DSPy's MIPROv2 failed: {type(exc).__name__}: {exc}. A small LM often cannot "
                "propose instructions in the format MIPROv2 needs: pass proposer_lm=<a stronger LM> "
                "(CLI: --proposer-lm), or use optimizer='optuna', which skips such candidates. The "
                "baseline scores are kept in the run directory."
            ) from exc


class GEPA(_DSPyOptimizer):
    """DSPy's GEPA: reflective prompt evolution (a reflection LM reads failed answers and rewrites the
    instruction; candidates kept on a Pareto front over the dev examples).

    Args:
        max_metric_calls: GEPA's own budget (program runs scored). Default: 6/7 of the run's LM-call
            budget (the rest is left for the reflection LM's calls), or 300 without one.
        reflection_minibatch_size, candidate_selection_strategy, use_merge: GEPA's options.
        max_errors: LM errors allowed before the run stops (see the module docstring).

    The reflection LM is the run's ``proposer_lm`` (default: the task LM; a 135M model writes poor
    proposals, gepa#170). The metric's feedback is the task's ``feedback(example, prediction)``, else
    the gold and the predicted label (:meth:`autoprompt.Task.feedback_text`). GEPA's state lives in
    ``<run_dir>/gepa``: a killed run resumed with ``--resume`` continues GEPA from its last iteration.
    """

    name = "gepa"
    dspy_name = "GEPA"

    def __init__(self, max_metric_calls: int | None = None, reflection_minibatch_size: int = 3,
                 candidate_selection_strategy: str = "pareto", use_merge: bool = True,
                 max_errors: int | None = None) -> None:
        self.max_metric_calls = max_metric_calls
        self.reflection_minibatch_size = reflection_minibatch_size
        self.candidate_selection_strategy = candidate_selection_strategy
        self.use_merge = use_merge
        self.max_errors = max_errors

    def metric_calls(self, context: Context) -> int:
        """GEPA's ``max_metric_calls`` for this run."""
        if self.max_metric_calls is not None:
            return self.max_metric_calls
        cap = context.meter.budget.max_calls
        return max(10, cap * 6 // 7) if cap else 300

    def run(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        log_dir = context.run_dir / "gepa"
        log_dir.mkdir(parents=True, exist_ok=True)
        optimizer = dspy.GEPA(
            metric=task.gepa_metric,
            max_metric_calls=self.metric_calls(context),
            reflection_minibatch_size=self.reflection_minibatch_size,
            candidate_selection_strategy=self.candidate_selection_strategy,
            reflection_lm=context.proposer_lm or dspy.settings.lm,
            use_merge=self.use_merge,
            num_threads=1,
            log_dir=str(log_dir),
            seed=context.seed,
        )
        return optimizer.compile(program, trainset=context.trainset, valset=context.devset)


class SIMBA(_DSPyOptimizer):
    """DSPy's SIMBA: stochastic mini-batch ascent; the LM writes rules from its own best and worst answers
    and adds demos.

    Args:
        bsize: mini-batch size (default: 32, at most the train split).
        num_candidates, max_steps, max_demos: SIMBA's options (a step costs about
            ``bsize x (num_candidates + 1)`` program runs).
        max_errors: LM errors allowed before the run stops (see the module docstring).
    """

    name = "simba"
    dspy_name = "SIMBA"

    def __init__(self, bsize: int | None = None, num_candidates: int = 6, max_steps: int = 8, max_demos: int = 4,
                 max_errors: int | None = None) -> None:
        self.bsize = bsize
        self.num_candidates = num_candidates
        self.max_steps = max_steps
        self.max_demos = max_demos
        self.max_errors = max_errors

    def run(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        optimizer = dspy.SIMBA(
            metric=task.dspy_metric,
            bsize=min(self.bsize or 32, len(context.trainset)),
            num_candidates=self.num_candidates,
            max_steps=self.max_steps,
            max_demos=self.max_demos,
            prompt_model=context.proposer_lm,
            num_threads=1,
        )
        return optimizer.compile(program, trainset=context.trainset, seed=context.seed)
