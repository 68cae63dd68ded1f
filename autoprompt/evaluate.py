"""Scoring a program on a split: parse failures score 0 and are counted, never raised.

We run our own loop instead of ``dspy.Evaluate`` because the two kinds of failure must be told
apart: an answer the LM could not format (counted, scored 0) and a broken metric or an unreachable
LM (raised at once with a clear message, see :class:`autoprompt.TaskError` / :class:`LMError`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.exceptions import AdapterParseError

from autoprompt._exceptions import AutopromptError, BudgetExhausted, LMError, find_cause
from autoprompt._parallel import lm_concurrency, ordered_map

__all__ = ["Evaluation", "evaluate_program", "run_one"]

logger = logging.getLogger(__name__)

#: consecutive LM errors (not parse failures) before the first success that abort an evaluation
MAX_LEADING_ERRORS = 3
#: an evaluation where more than this share of the examples end in an LM error raises LMError (its score would
#: measure the server, not the program); an LM failing on every example raises whatever the split size
MAX_ERROR_SHARE = 0.2


@dataclass
class Evaluation:
    """The score of one program on one split.

    Attributes:
        split: split name.
        score: mean metric value in [0, 1] for the usual 0/1 metrics.
        n: examples scored.
        parse_failures: answers that did not parse (scored 0).
        errors: other LM errors (scored 0).
        seconds: wall time.
        records: per example: inputs, gold label, predicted label, score.
    """

    split: str
    score: float
    n: int
    parse_failures: int = 0
    errors: int = 0
    seconds: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self, records: bool = False) -> dict[str, Any]:
        out = {
            "split": self.split,
            "score": self.score,
            "n": self.n,
            "parse_failures": self.parse_failures,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }
        if records:
            out["records"] = self.records
        return out


def failure_text(records: list[dict[str, Any]]) -> str:
    """The last LM error of an evaluation's records."""
    return next((r["failure"] for r in reversed(records) if r["failure"] not in (None, "parse")), "none")


def run_one(program: dspy.Module, example: dspy.Example) -> tuple[Any, str | None]:
    """Run the program on one example: ``(prediction, None)`` or ``(None, failure kind)``.

    Raises:
        BudgetExhausted: the run's LM budget is spent (never swallowed).
    """
    try:
        return program(**example.inputs()), None
    except Exception as exc:
        budget = find_cause(exc, BudgetExhausted)
        if budget is not None:
            raise budget
        own = find_cause(exc, AutopromptError)
        if own is not None and not isinstance(own, LMError):
            raise own
        if find_cause(exc, AdapterParseError) is not None:
            logger.debug("parse failure: %s", exc)
            return None, "parse"
        logger.debug("LM error: %r", exc)
        return None, f"error: {type(exc).__name__}: {exc}"


def evaluate_program(
    program: dspy.Module,
    task: Any,
    split: str,
    *,
    limit: int | None = None,
    progress: bool = True,
    desc: str | None = None,
    max_error_share: float = MAX_ERROR_SHARE,
    threads: int | None = None,
) -> Evaluation:
    """Score ``program`` on a split of ``task`` with the LM and adapter of the current DSPy context.

    ``threads`` calls run at once (default: as many as the LM answers at once, see
    :func:`autoprompt._parallel.lm_concurrency`); records and scores come out in the split's order.

    Answers that do not parse score 0 and are counted (``parse_failures``). LM errors (a server down, a
    timeout) score 0 too, are counted (``errors``) and logged at WARNING; the evaluation raises
    :class:`LMError` when the first ``MAX_LEADING_ERRORS`` examples all fail, when every example fails
    (whatever the split size), or when more than ``max_error_share`` of them fail.
    """
    from tqdm.auto import tqdm

    examples = task.examples(split, limit=limit)
    started = time.monotonic()
    answers = ordered_map(lambda ex: run_one(program, ex), examples, threads or lm_concurrency())
    bar = tqdm(examples, desc=desc or f"eval {split}", disable=not progress, unit="ex", leave=False)
    try:
        return _score_answers(examples, answers, bar, task, split, max_error_share, started)
    finally:
        answers.close()  # an early stop: the calls still running finish, no new one starts
        bar.close()


def _score_answers(examples: list, answers: Any, bar: Any, task: Any, split: str, max_error_share: float,
                   started: float) -> Evaluation:
    """The loop of :func:`evaluate_program` over ``(example, (prediction, failure))`` in split order."""
    total = 0.0
    parse_failures = errors = 0
    records = []
    for i, (example, (prediction, failure)) in enumerate(zip(bar, answers)):
        if failure == "parse":
            parse_failures += 1
        elif failure is not None:
            errors += 1
            if errors < i + 1 and (errors <= 3 or errors % 50 == 0):  # leading errors: raised or summed up below
                logger.warning("LM error on example %d of split %r (%d so far): %s", i, split, errors, failure)
            if errors == i + 1 and errors >= MAX_LEADING_ERRORS:
                raise LMError(
                    f"the LM failed on the first {errors} examples of split {split!r}; last "
                    f"{failure}. Check that the LM is reachable and configured.",
                    retryable=True,
                )
        value = task.score(example, prediction)
        total += value
        got = getattr(prediction, task.label_field, None) if prediction is not None else None
        records.append(
            {
                "inputs": {k: example[k] for k in task.input_fields},
                "gold": example[task.label_field],
                "predicted": got,
                "score": value,
                "failure": failure,
            }
        )
        bar.set_postfix(score=f"{total / (i + 1):.3f}")
    n = len(examples)
    if errors and (errors == n or errors > max_error_share * n):
        raise LMError(
            f"the LM failed on {errors} of {n} examples of split {split!r} (more than "
            f"{max_error_share:.0%}); last {failure_text(records)}. A score with that many failures measures the "
            "LM server, not the program: check the LM (its errors are in the log) and run again",
            retryable=True,
        )
    if errors:
        logger.warning("split %r: %d of %d examples ended in an LM error (scored 0)", split, errors, n)
    return Evaluation(
        split=split,
        score=total / n if n else 0.0,
        n=n,
        parse_failures=parse_failures,
        errors=errors,
        seconds=time.monotonic() - started,
        records=records,
    )
