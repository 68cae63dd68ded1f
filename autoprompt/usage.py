"""Counting LM calls and tokens, and enforcing a budget.

:class:`Meter` is a ``dspy.utils.usage_tracker.UsageTracker``: installed with
``dspy.context(usage_tracker=meter)`` it sees every LM call DSPy makes that was not answered from
the cache, whatever the backend. autoprompt's own engines also call :meth:`Meter.check` before each
call, so a cap on LM calls is exact for the embedded model; for other backends the cap is checked
between steps of the search.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from autoprompt._exceptions import BudgetExhausted

__all__ = ["Budget", "Meter", "current_meter"]


@dataclass(frozen=True)
class Budget:
    """Caps for one run; ``None`` means no cap.

    Args:
        max_calls: LM calls that reach the model (cache hits are free).
        max_tokens: prompt + completion tokens.
        max_seconds: wall time of the optimization step.
    """

    max_calls: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_calls", "max_tokens", "max_seconds"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"Budget.{name} must be positive or None, got {value!r}")


class Meter(UsageTracker):
    """Counts calls and tokens of the LM calls made while it is installed."""

    def __init__(self, budget: Budget | None = None) -> None:
        super().__init__()
        self.budget = budget or Budget()
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.enforcing = False

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        super().add_usage(lm, usage_entry)
        with self._lock:
            self.calls += 1
            self.prompt_tokens += int(usage_entry.get("prompt_tokens") or usage_entry.get("input_tokens") or 0)
            self.completion_tokens += int(
                usage_entry.get("completion_tokens") or usage_entry.get("output_tokens") or 0
            )

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def exhausted(self) -> str | None:
        """Which cap is reached, or ``None``."""
        b = self.budget
        if b.max_calls is not None and self.calls >= b.max_calls:
            return f"{self.calls} LM calls (cap {b.max_calls})"
        if b.max_tokens is not None and self.tokens >= b.max_tokens:
            return f"{self.tokens} tokens (cap {b.max_tokens})"
        if b.max_seconds is not None and self.seconds >= b.max_seconds:
            return f"{self.seconds:.0f} s (cap {b.max_seconds:.0f} s)"
        return None

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` if enforcing and a cap is reached."""
        if self.enforcing:
            reason = self.exhausted()
            if reason is not None:
                raise BudgetExhausted(f"LM budget spent: {reason}")

    @contextmanager
    def holding_back(self, calls: int) -> Iterator[None]:
        """Within the block the cap on LM calls is ``calls`` lower (no effect without a call cap, or with
        ``calls`` 0): what a later step of the same run needs is left for it (e.g. the search's refit of its
        winner, :class:`autoprompt.optimizers.OptunaSearch`).

        Example:
            >>> meter = Meter(Budget(max_calls=10))
            >>> with meter.holding_back(4):
            ...     meter.budget.max_calls
            6
            >>> meter.budget.max_calls
            10
        """
        budget = self.budget
        if calls <= 0 or budget.max_calls is None:
            yield
            return
        if calls >= budget.max_calls:
            raise ValueError(f"cannot hold back {calls} of {budget.max_calls} LM calls")
        self.budget = replace(budget, max_calls=budget.max_calls - calls)
        try:
            yield
        finally:
            self.budget = budget

    def child(self) -> "Meter":
        """A meter of one part of the run (e.g. one trial of several running at once): it counts that
        part's calls and passes each to this meter, whose budget it enforces."""
        return _ChildMeter(self)

    def snapshot(self) -> dict[str, float]:
        return {
            "lm_calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.tokens,
        }


class _ChildMeter(Meter):
    def __init__(self, parent: Meter) -> None:
        super().__init__(parent.budget)
        self.parent = parent

    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        super().add_usage(lm, usage_entry)
        self.parent.add_usage(lm, usage_entry)

    def exhausted(self) -> str | None:
        return self.parent.exhausted()

    def check(self) -> None:
        self.parent.check()


def current_meter() -> Meter | None:
    """The meter installed in the current DSPy context, if it is an autoprompt one."""
    tracker = dspy.settings.usage_tracker
    return tracker if isinstance(tracker, Meter) else None
