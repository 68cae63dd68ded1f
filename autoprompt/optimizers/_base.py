"""The optimizer extension point: ``compile(program, task, context) -> program``."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import dspy

    from autoprompt.task import Task
    from autoprompt.usage import Meter

__all__ = ["BaseOptimizer", "Context"]


@dataclass
class Context:
    """What a run gives its optimizer besides the program and the task.

    Attributes:
        trainset, devset: the examples to learn from and to score candidates on.
        seed: the run's seed.
        run_dir: the run directory (optimizers write their state here).
        meter: counts LM calls and tokens; ``meter.exhausted()`` says when to stop.
        proposer_lm: LM for proposing instructions and bootstrapping demos (default: the task LM).
        progress: show progress bars.
        resume: continue the state found in ``run_dir`` instead of starting anew.
        worker: 0 for the main process; another number for each extra worker joining the run (it
            seeds that worker's sampler differently).
    """

    trainset: list
    devset: list
    seed: int
    run_dir: Path
    meter: "Meter"
    proposer_lm: Any = None
    progress: bool = True
    resume: bool = False
    worker: int = 0


class BaseOptimizer(abc.ABC):
    """Turns a program into a better one. Subclasses store options in ``__init__`` only.

    Attributes:
        name: the name the CLI and :func:`autoprompt.optimize` know it by.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def compile(self, program: "dspy.Module", task: "Task", context: Context) -> "dspy.Module":
        """Return the optimized program (``program`` itself is left as it was)."""

    def options(self) -> dict[str, Any]:
        """The constructor options, as recorded in the run's config."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_")}
