"""ordered_map: order, bounded run-ahead, context propagation, early stop (pure logic, no LM)."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from autoprompt._parallel import lm_concurrency, ordered_map

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


def test_results_come_in_input_order_with_calls_overlapping() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def slow(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02 * (i % 3))  # later items often finish first
        with lock:
            running[0] -= 1
        return i * i

    assert list(ordered_map(slow, range(20), threads=3)) == [i * i for i in range(20)]
    assert 1 < peak[0] <= 3


def test_each_call_sees_the_callers_context() -> None:
    token = VAR.set("caller")
    try:
        assert set(ordered_map(lambda _: VAR.get(), range(6), threads=2)) == {"caller"}
    finally:
        VAR.reset(token)


def test_stopping_early_submits_no_more_than_twice_the_threads_ahead() -> None:
    started: list[int] = []

    def record(i: int) -> int:
        started.append(i)
        return i

    results = ordered_map(record, range(1000), threads=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    assert len(started) <= 3 + 2 * 2


def test_an_exception_is_raised_where_its_result_is_consumed() -> None:
    def fail_on_five(i: int) -> int:
        if i == 5:
            raise ValueError("five")
        return i

    got = []
    with pytest.raises(ValueError, match="five"):
        for value in ordered_map(fail_on_five, range(10), threads=2):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_concurrency_of_an_lm(monkeypatch) -> None:
    class Engine:
        instances = 3

    class LM:
        engine = Engine()

    assert lm_concurrency(LM()) == 3
    monkeypatch.setenv("AUTOPROMPT_LM_CONCURRENCY", "4")
    assert lm_concurrency(object()) == 4  # a remote LM: as many as the server is said to take
    monkeypatch.delenv("AUTOPROMPT_LM_CONCURRENCY")
    assert lm_concurrency(object()) == 1
