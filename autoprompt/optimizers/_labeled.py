"""The trivial optimizer: k labelled training examples as demos (DSPy's LabeledFewShot)."""

from __future__ import annotations

import dspy

from autoprompt.optimizers._base import BaseOptimizer, Context

__all__ = ["LabeledFewShot"]


class LabeledFewShot(BaseOptimizer):
    """Put ``k`` labelled training examples (seeded sample) into every predictor's prompt.

    Example:
        >>> LabeledFewShot(k=4).name
        'labeled'
    """

    name = "labeled"

    def __init__(self, k: int = 4) -> None:
        self.k = k

    def compile(self, program: dspy.Module, task, context: Context) -> dspy.Module:
        optimizer = dspy.LabeledFewShot(k=self.k)
        return optimizer.compile(program.deepcopy(), trainset=context.trainset, sample=True)
