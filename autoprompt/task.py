"""Tasks: the program to optimize, its labelled splits and its metric.

A task module is a Python file that defines ``task = autoprompt.Task(...)`` or a function
``make_task(**options) -> Task`` (options come from ``load_task(path, key=value)`` or the CLI's
``--task-option key=value``).

Example:
    >>> import dspy
    >>> from typing import Literal
    >>> class Sentiment(dspy.Signature):
    ...     '''Classify the sentiment of a sentence.'''
    ...     text: str = dspy.InputField()
    ...     label: Literal["positive", "negative"] = dspy.OutputField()
    >>> rows = [{"text": "a joy", "label": "positive"}, {"text": "a bore", "label": "negative"}]
    >>> task = Task(name="toy", program=Sentiment, train=rows, dev=rows, test=rows)
    >>> task.choices
    ['positive', 'negative']
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import numbers
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import dspy

from autoprompt import data as _data
from autoprompt._exceptions import DataError, TaskError

__all__ = ["SPLITS", "Task", "exact_match", "load_task", "stratified_sample"]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")

Metric = Callable[..., Any]


def exact_match(field: str) -> Metric:
    """A metric: 1.0 when ``prediction.<field>`` equals ``example.<field>`` (case and spaces ignored).

    Example:
        >>> m = exact_match("label")
        >>> m(dspy.Example(label="Positive"), dspy.Prediction(label=" positive"))
        1.0
    """

    def metric(example: Any, prediction: Any, trace: Any = None) -> float:
        gold = _norm(example[field])
        got = getattr(prediction, field, None) if prediction is not None else None
        return float(got is not None and _norm(got) == gold)

    metric.__name__ = f"exact_match_{field}"
    return metric


def _norm(value: Any) -> str:
    return str(value).strip().lower()


class Task:
    """A program to optimize, with train/dev/test splits and a metric.

    Args:
        name: short name, used for run directories and exports.
        program: a ``dspy.Signature`` class, a signature string (``"text -> label"``), or a
            ``dspy.Module``. A signature becomes ``dspy.Predict(signature)``.
        train, dev, test: split sources (see :mod:`autoprompt.data`): a file path, a list of dicts,
            a ``datasets.Dataset`` or ``autoprompt.data.hub(...)``.
        metric: ``metric(example, prediction, trace=None) -> float | bool``. Default: exact match
            of the label field.
        label_field: the output field scored by the default metric. Default: the program's only
            output field.
        choices: allowed label values. Default: the ``Literal[...]`` of the label field, if any.
        columns: renames data columns to field names, e.g. ``{"category": "label"}``.
        prepare: optional ``row -> row`` function applied to every row after renaming.
        search_space: optional ``trial -> dict`` adding task-specific parameters to the Optuna
            search, e.g. ``lambda trial: {"module": trial.suggest_categorical("module", ["predict", "cot"])}``.
        configure: optional ``(program, params) -> program`` applying those parameters to a fresh
            program (e.g. returning a ``dspy.ChainOfThought`` for ``module="cot"``); predictors it
            keeps under their names still get the trial's instruction and demos.
        feedback: optional ``(example, prediction) -> str``: what GEPA's reflection reads about one
            answer. Default: the gold and the predicted label (see :meth:`feedback_text`).
        source: where the task was defined (set by :func:`load_task`; used in error messages).
    """

    def __init__(
        self,
        *,
        name: str,
        program: Any,
        train: Any,
        dev: Any,
        test: Any = None,
        metric: Metric | None = None,
        label_field: str | None = None,
        choices: list[str] | None = None,
        columns: Mapping[str, str] | None = None,
        prepare: Callable[[dict], dict] | None = None,
        search_space: Callable[..., dict] | None = None,
        configure: Callable[[Any, dict], Any] | None = None,
        feedback: Callable[[Any, Any], str] | None = None,
        source: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise TaskError(f"Task name must be a non-empty string, got {name!r}")
        self.name = name
        self.source = source or "<in memory>"
        self._program = self._check_program(program)
        self.sources = {"train": train, "dev": dev, "test": test}
        sig = self.signature
        self.input_fields = list(sig.input_fields)
        outputs = list(sig.output_fields)
        if label_field is None:
            label_field = outputs[-1]
        if label_field not in outputs:
            raise TaskError(
                f"task {name!r} ({self.source}): label_field={label_field!r} is not an output field "
                f"of the program; its output fields are {outputs}"
            )
        self.label_field = label_field
        self.choices = list(choices) if choices is not None else _literal_choices(sig, label_field)
        self.metric = metric or exact_match(label_field)
        self.columns = dict(columns or {})
        self.prepare = prepare
        self.search_space = search_space
        self.configure = configure
        self.feedback = feedback
        if (search_space is None) != (configure is None):
            raise TaskError(f"task {name!r} ({self.source}): give search_space and configure together")
        self._examples: dict[str, list[dspy.Example]] = {}

    # -- the program -------------------------------------------------------------------------
    def _check_program(self, program: Any) -> Any:
        if isinstance(program, str):
            try:
                return dspy.Signature(program)
            except Exception as exc:
                raise TaskError(
                    f"task {self.name!r} ({self.source}): program={program!r} is not a valid "
                    f"signature string ('inputs -> outputs'): {exc}"
                ) from exc
        if isinstance(program, type) and issubclass(program, dspy.Signature):
            return program
        if isinstance(program, dspy.Module):
            if not program.predictors():
                raise TaskError(f"task {self.name!r} ({self.source}): the program has no predictors")
            return program
        raise TaskError(
            f"task {self.name!r} ({self.source}): program must be a dspy.Signature class, a "
            f"signature string or a dspy.Module, got {type(program).__name__}"
        )

    def make_program(self) -> dspy.Module:
        """A fresh, unoptimized copy of the task's program."""
        if isinstance(self._program, dspy.Module):
            return copy.deepcopy(self._program)
        return dspy.Predict(self._program)

    @property
    def signature(self) -> type[dspy.Signature]:
        """The signature of the last predictor (the one producing the label)."""
        if isinstance(self._program, dspy.Module):
            return self._program.predictors()[-1].signature
        return self._program

    # -- data --------------------------------------------------------------------------------
    def examples(self, split: str, limit: int | None = None, *, seed: int | None = 0) -> list[dspy.Example]:
        """The examples of a split, as ``dspy.Example`` with inputs set.

        Args:
            limit: at most this many examples: a seeded sample stratified over the labels (a split
                sorted by label, like Banking77's test file, gives every label its share instead of
                the first label only), in the split's order.
            seed: the sample's seed (default 0: the same sample in every run); ``None``: the first
                ``limit`` rows.
        """
        if split not in SPLITS:
            raise TaskError(f"split must be one of {SPLITS}, got {split!r}")
        if split not in self._examples:
            self._examples[split] = self._load(split)
        rows = self._examples[split]
        if not limit or limit >= len(rows):
            return rows
        if seed is None:
            return rows[:limit]
        return stratified_sample(rows, limit, seed=seed, key=lambda ex: str(ex[self.label_field]))

    def _load(self, split: str) -> list[dspy.Example]:
        source = self.sources[split]
        where = _data.describe(source)
        if source is None:
            raise DataError(
                f"task {self.name!r} ({self.source}) has no {split!r} split; give Task({split}=...) "
                "a file, a list of rows or a hub source"
            )
        dataset = _data.load_split(source)
        if len(dataset) == 0:
            raise DataError(
                f"split {split!r} of task {self.name!r} is empty ({where}); add rows or fix the path"
            )
        needed = [*self.input_fields, self.label_field]
        examples = []
        for i, row in enumerate(dataset):
            row = {self.columns.get(k, k): v for k, v in row.items()}
            if self.prepare is not None:
                try:
                    row = self.prepare(row)
                except Exception as exc:
                    raise TaskError(f"{where}: the task's prepare() failed on row {i} of split {split!r}: "
                                    f"{type(exc).__name__}: {exc}; fix prepare() in {self.source} or the row") from exc
            missing = [f for f in needed if row.get(f) is None or row.get(f) == ""]
            if missing:
                raise DataError(
                    f"{where}: row {i} of split {split!r} has no value for field(s) {missing} "
                    f"(it has {sorted(row)}); fix the data or map its columns with "
                    f"Task(columns={{'<column>': '{missing[0]}'}})"
                )
            label = row[self.label_field]
            if self.choices is not None and str(label) not in self.choices:
                raise DataError(
                    f"{where}: row {i} of split {split!r} has {self.label_field}={label!r}, which "
                    f"is not one of the declared choices {self.choices[:10]}"
                    f"{'...' if len(self.choices) > 10 else ''}; fix the row or the choices"
                )
            fields = {k: row[k] for k in needed}
            examples.append(dspy.Example(**fields).with_inputs(*self.input_fields))
        return examples

    # -- scoring -----------------------------------------------------------------------------
    def score(self, example: dspy.Example, prediction: Any) -> float:
        """Score one prediction; ``None`` (the LM's answer did not parse) scores 0.

        Raises:
            TaskError: the metric raised or returned something that is not a number.
        """
        if prediction is None:
            return 0.0
        name = getattr(self.metric, "__name__", repr(self.metric))
        try:
            value = self.metric(example, prediction, None)
        except Exception as exc:
            raise TaskError(
                f"the metric {name} of task {self.name!r} ({self.source}) raised "
                f"{type(exc).__name__}: {exc} on example {dict(example)}; fix the metric"
            ) from exc
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, numbers.Real) or math.isnan(float(value)):
            raise TaskError(
                f"the metric {name} of task {self.name!r} ({self.source}) returned {value!r} "
                f"({type(value).__name__}); a metric must return a number or a bool"
            )
        return float(value)

    def dspy_metric(self, example: Any, prediction: Any, trace: Any = None) -> float:
        """The metric as DSPy optimizers call it (``trace`` is passed through)."""
        if trace is None:
            return self.score(example, prediction)
        return self.score(example, prediction) >= 1.0

    def feedback_text(self, example: Any, prediction: Any) -> str:
        """What GEPA's reflection LM reads about one answer: the task's ``feedback`` if it has one, else
        the gold and the predicted label (and the declared choices)."""
        if self.feedback is not None:
            try:
                return str(self.feedback(example, prediction))
            except Exception as exc:
                raise TaskError(f"the feedback function of task {self.name!r} ({self.source}) raised "
                                f"{type(exc).__name__}: {exc}; fix it") from exc
        gold = example[self.label_field]
        got = getattr(prediction, self.label_field, None) if prediction is not None else None
        if got is None:
            return f"The answer could not be read. The correct {self.label_field} is {gold!r}."
        choices = f" (one of {self.choices})" if self.choices and len(self.choices) <= 20 else ""
        if self.score(example, prediction) >= 1.0:
            return f"Correct: the {self.label_field} is {gold!r}."
        return f"Wrong: the answer was {got!r}, but the correct {self.label_field} is {gold!r}{choices}."

    def gepa_metric(self, gold: Any, pred: Any, trace: Any = None, pred_name: Any = None,
                    pred_trace: Any = None) -> Any:
        """The metric as DSPy's GEPA calls it: ``dspy.Prediction(score=, feedback=)``."""
        return dspy.Prediction(score=self.score(gold, pred), feedback=self.feedback_text(gold, pred))

    def validate(self, splits: tuple[str, ...] = SPLITS) -> "Task":
        """Load the splits and run the metric once on a gold answer; raise a named error if not usable."""
        for split in splits:
            if split == "test" and self.sources["test"] is None:
                continue
            self.examples(split)
        gold = self.examples("dev")[0]
        self.score(gold, dspy.Prediction(**gold.labels()))
        return self

    def __repr__(self) -> str:
        return f"Task(name={self.name!r}, source={self.source!r})"


def stratified_sample(rows: list[Any], n: int, *, seed: int, key: Callable[[Any], str]) -> list[Any]:
    """``n`` of ``rows``, each label's share proportional to its count (largest remainder), seeded;
    the chosen rows keep their order in ``rows``.

    Example:
        >>> rows = ["a1", "a2", "a3", "a4", "b1", "b2"]
        >>> sorted(stratified_sample(rows, 3, seed=0, key=lambda r: r[0]))[0][0], len(stratified_sample(rows, 3, seed=0, key=lambda r: r[0]))
        ('a', 3)
    """
    import random

    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(key(row), []).append(i)
    rng = random.Random(seed)
    quotas = {k: n * len(v) / len(rows) for k, v in groups.items()}
    take = {k: int(q) for k, q in quotas.items()}
    for k in sorted(groups, key=lambda k: (-(quotas[k] - take[k]), k))[: n - sum(take.values())]:
        take[k] += 1
    chosen: list[int] = []
    for k in sorted(groups):
        ids = list(groups[k])
        rng.shuffle(ids)
        chosen += ids[: take[k]]
    return [rows[i] for i in sorted(chosen)]


def _literal_choices(sig: type[dspy.Signature], field: str) -> list[str] | None:
    annotation = sig.output_fields[field].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def load_task(path: str | Path, **options: Any) -> Task:
    """Load a task module (a ``.py`` file) and return its :class:`Task`.

    Args:
        path: the task file, e.g. ``"tasks/sentiment.py"``.
        **options: passed to the module's ``make_task(**options)``.

    Raises:
        TaskError: the file is missing, does not import, or defines no task.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task file {str(path)!r} does not exist; pass the path of a .py task module")
    module_name = f"autoprompt_task_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"{path}: not a Python module; a task file ends in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except TaskError:
        raise
    except Exception as exc:
        raise TaskError(f"{path}: importing the task module failed: {type(exc).__name__}: {exc}") from exc
    make = getattr(module, "make_task", None)
    if callable(make):
        try:
            task = make(**options)
        except TaskError:
            raise
        except TypeError as exc:
            raise TaskError(f"{path}: make_task() rejected the options {options}: {exc}") from exc
        except Exception as exc:  # e.g. a ValueError on --task-option seed=abc
            raise TaskError(f"{path}: make_task({', '.join(f'{k}={v!r}' for k, v in options.items())}) failed: "
                            f"{type(exc).__name__}: {exc}; fix the task options (--task-option) or the task "
                            "module") from exc
    else:
        if options:
            raise TaskError(f"{path}: task options {sorted(options)} given, but the module has no make_task()")
        task = getattr(module, "task", None)
    if not isinstance(task, Task):
        raise TaskError(
            f"{path} does not define a task: add `task = autoprompt.Task(...)` or a function "
            "`make_task(**options)` returning one"
        )
    if task.source == "<in memory>":
        task.source = str(path)
    return task
