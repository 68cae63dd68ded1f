"""The exceptions autoprompt raises.

Every error names what was wrong (file, field, value) and how to fix it.

    AutopromptError
     +-- TaskError          a task module, its data or its metric is unusable
     |    +-- DataError     a split could not be loaded or is malformed
     +-- LMError            the LM could not be built or reached (``retryable`` says if a retry helps)
     +-- BudgetExhausted    a cap on LM calls was reached; the run keeps its best so far
     +-- ExportError        an exported file cannot be written or read back
     +-- FinetuneError      fine-tuning cannot run (extra not installed, no data) or its job failed
     +-- RunError           a run directory is missing or incomplete
"""

from __future__ import annotations

from typing import Iterator, TypeVar

__all__ = [
    "AutopromptError",
    "BudgetExhausted",
    "DataError",
    "ExportError",
    "FinetuneError",
    "LMError",
    "MissingExtraError",
    "OptionError",
    "RunError",
    "TaskError",
    "causes",
    "find_cause",
]

E = TypeVar("E", bound=BaseException)


class AutopromptError(Exception):
    """Root of every error autoprompt raises on purpose."""


class TaskError(AutopromptError):
    """A task module, its splits, or its metric cannot be used."""


class DataError(TaskError):
    """A data split could not be loaded, or its rows lack a required field."""


class LMError(AutopromptError):
    """The LM could not be built or did not answer.

    Args:
        message: what happened and what to do.
        retryable: whether running the same thing again may succeed.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class BudgetExhausted(AutopromptError):
    """The LM-call budget of a run is spent."""


class ExportError(AutopromptError):
    """An export cannot be written, or a file cannot be loaded back."""


class FinetuneError(AutopromptError):
    """Fine-tuning cannot run (the ``finetune`` extra is missing, the data is empty) or its job failed."""


class OptionError(AutopromptError, TypeError):
    """An option a constructor does not take, or a value of the wrong type (also a ``TypeError``)."""


class MissingExtraError(AutopromptError, ImportError):
    """An optional dependency is missing; the message names the extra to install (also an ``ImportError``)."""


class RunError(AutopromptError):
    """A run directory is missing, or lacks a file a command needs."""


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during (``__cause__`` / ``__context__``), once each."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


def find_cause(exc: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``exc``'s chain (see :func:`causes`), or None."""
    return next((e for e in causes(exc) if isinstance(e, kind)), None)
