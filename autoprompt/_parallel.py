"""Run program calls a few at a time, in order: as many as the LM answers at once.

The embedded engine answers ``instances`` calls at a time (one llama.cpp copy each); other LMs one,
unless ``$AUTOPROMPT_LM_CONCURRENCY`` says more (a server with parallel slots). Results come back in
the order of the inputs, so what is computed from them does not depend on the thread count.
Each call runs in a copy of the caller's context (DSPy's settings, the usage meter and the budget
are context variables), as DSPy's own ``ParallelExecutor`` does.

Why not ``dspy.Parallel``: it collects all results before returning; an evaluation stops early on
leading LM errors and the ``w`` step's tracing stops once its label quotas are full, so results are
consumed one by one while at most ``2 x threads`` calls are in flight.
"""

from __future__ import annotations

import collections
import contextvars
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, TypeVar

__all__ = ["lm_concurrency", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def lm_concurrency(lm: Any = None) -> int:
    """How many calls ``lm`` (default: DSPy's current LM) answers at once."""
    import dspy

    lm = lm if lm is not None else dspy.settings.lm
    engine = getattr(lm, "engine", None)
    instances = getattr(engine, "instances", None)
    if isinstance(instances, int) and instances > 0:
        return instances
    return max(1, int(os.environ.get("AUTOPROMPT_LM_CONCURRENCY", 0) or 1))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``map(fn, items)`` with up to ``threads`` calls at once, yielding in the order of ``items``.

    At most ``2 x threads`` calls run ahead of the consumer; stopping the iteration (or an exception
    in ``fn``, raised where its result is consumed) waits for those and submits no more.
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    source = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="autoprompt-lm") as pool:
        pending: collections.deque = collections.deque()

        def submit() -> bool:
            for item in source:
                pending.append(pool.submit(contextvars.copy_context().run, fn, item))
                return True
            return False

        for _ in range(2 * threads):
            if not submit():
                break
        try:
            while pending:
                result = pending.popleft().result()
                submit()
                yield result
        finally:
            for future in pending:
                future.cancel()
