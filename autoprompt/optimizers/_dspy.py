"""DSPy's own optimizers, run as they are: BootstrapFewShot, its random search, and MIPROv2.

Parse failures of the small LM never end the run: DSPy's error cap is lifted while they compile
and a failed example just scores 0.
"""

from __future__ import annotations

import logging
from typing import Any

import dspy

from autoprompt._exceptions import AutopromptError
from autoprompt.optimizers._base import BaseOptimizer, Context

__all__ = ["BootstrapFewShot", "MIPROv2", "RandomSearch"]

logger = logging.getLogger(__name__)

_NO_ERROR_CAP = 10**9


class BootstrapFewShot(BaseOptimizer):
    """DSPy's BootstrapFewShot: demos are the program's own traces that pass the metric."""

    name = "bootstrap"

    def __init__(self, max_bootstrapped_demos: int = 4, max_labeled_demos: int = 4, max_rounds: int = 1) -> None:
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.max_rounds = max_rounds

    def compile(self, program: dspy.Module, task, context: Context) -> dspy.Module:
        optimizer = dspy.BootstrapFewShot(
            metric=task.dspy_metric,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            max_rounds=self.max_rounds,
            max_errors=_NO_ERROR_CAP,
        )
        with dspy.context(max_errors=_NO_ERROR_CAP):
            return optimizer.compile(program.deepcopy(), trainset=context.trainset)


class RandomSearch(BaseOptimizer):
    """DSPy's BootstrapFewShotWithRandomSearch: several bootstrapped demo sets, the best on dev wins."""

    name = "random-search"

    def __init__(
        self, num_candidate_programs: int = 6, max_bootstrapped_demos: int = 4, max_labeled_demos: int = 4
    ) -> None:
        self.num_candidate_programs = num_candidate_programs
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos

    def compile(self, program: dspy.Module, task, context: Context) -> dspy.Module:
        optimizer = dspy.BootstrapFewShotWithRandomSearch(
            metric=task.dspy_metric,
            num_candidate_programs=self.num_candidate_programs,
            max_bootstrapped_demos=self.max_bootstrapped_demos,
            max_labeled_demos=self.max_labeled_demos,
            num_threads=1,
            max_errors=_NO_ERROR_CAP,
        )
        with dspy.context(max_errors=_NO_ERROR_CAP):
            return optimizer.compile(program.deepcopy(), trainset=context.trainset, valset=context.devset)


class MIPROv2(BaseOptimizer):
    """DSPy's MIPROv2 (instructions + demos by Bayesian optimization), with ``auto`` presets.

    A weak LM can fail in MIPROv2's instruction-proposal step; pass ``proposer_lm`` to
    :func:`autoprompt.optimize` to propose with a stronger LM, or use ``optimizer="optuna"``, which
    skips candidates the LM cannot produce.
    """

    name = "mipro"

    def __init__(
        self,
        auto: str | None = "light",
        num_candidates: int | None = None,
        num_trials: int | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        minibatch_size: int = 35,
    ) -> None:
        self.auto = auto
        self.num_candidates = num_candidates
        self.num_trials = num_trials
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.minibatch_size = minibatch_size

    def compile(self, program: dspy.Module, task, context: Context) -> dspy.Module:
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
        minibatch = len(context.devset) > self.minibatch_size
        try:
            with dspy.context(max_errors=_NO_ERROR_CAP):
                return optimizer.compile(
                    program.deepcopy(),
                    trainset=context.trainset,
                    valset=context.devset,
                    minibatch=minibatch,
                    minibatch_size=min(self.minibatch_size, len(context.devset)),
                    **kwargs,
                )
        except AutopromptError:
            raise
        except Exception as exc:
            raise AutopromptError(
                f"DSPy's MIPROv2 failed: {type(exc).__name__}: {exc}. A small LM often cannot "
                "propose instructions in the format MIPROv2 needs: pass proposer_lm=<a stronger LM> "
                "(CLI: --proposer-lm), or use optimizer='optuna', which skips such candidates. The "
                "baseline scores are kept in the run directory."
            ) from exc
