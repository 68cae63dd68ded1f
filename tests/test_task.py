"""Task modules: loading, the shipped tasks, and the named errors for bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dspy
import pytest

import autoprompt
from autoprompt import DataError, TaskError

from .conftest import TASKS

HEADER = """
import dspy
from typing import Literal
import autoprompt

class Sentiment(dspy.Signature):
    '''Classify the sentiment.'''
    text: str = dspy.InputField()
    label: Literal["positive", "negative"] = dspy.OutputField()

GOOD = [{"text": "a joy", "label": "positive"}, {"text": "a bore", "label": "negative"}]
"""


def write_task(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_task.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return path


def test_user_task_file_anywhere(tmp_path):
    path = write_task(tmp_path, "task = autoprompt.Task(name='mine', program=Sentiment, train=GOOD, dev=GOOD, test=GOOD)")
    task = autoprompt.load_task(path).validate()
    assert task.name == "mine"
    assert task.source == str(path)
    assert task.choices == ["positive", "negative"]
    assert task.input_fields == ["text"] and task.label_field == "label"
    example = task.examples("dev")[0]
    assert example.inputs().toDict() == {"text": "a joy"}
    assert isinstance(task.make_program(), dspy.Predict)


def test_make_task_options(tmp_path):
    path = write_task(tmp_path, """
        def make_task(n=1):
            return autoprompt.Task(name=f'n{n}', program=Sentiment, train=GOOD, dev=GOOD[:int(n)])
    """)
    assert autoprompt.load_task(path, n=1).name == "n1"
    with pytest.raises(TaskError, match="rejected the options"):
        autoprompt.load_task(path, bogus=3)


def test_shipped_sentiment_uses_shared_sst2(sst2_dir, monkeypatch):
    monkeypatch.setenv("AUTOPROMPT_DATA_DIR", str(sst2_dir.parent))
    task = autoprompt.load_task(TASKS / "sentiment.py").validate()
    sizes = {s: len(task.examples(s)) for s in ("train", "dev", "test")}
    assert sizes == {"train": 3000, "dev": 436, "test": 436}
    dev_texts = {e.text for e in task.examples("dev")}
    assert not dev_texts & {e.text for e in task.examples("test")}


def test_shipped_sentiment_falls_back_to_own_small_set(small_task):
    assert {s: len(small_task.examples(s)) for s in ("train", "dev", "test")} == {"train": 40, "dev": 20, "test": 20}


def test_shipped_iris():
    task = autoprompt.load_task(TASKS / "iris.py").validate()
    assert {s: len(task.examples(s)) for s in ("train", "dev", "test")} == {"train": 50, "dev": 50, "test": 50}
    assert task.choices == ["setosa", "versicolor", "virginica"]
    assert len(task.input_fields) == 4


def test_shipped_banking77(sst2_dir):
    task = autoprompt.load_task(TASKS / "banking77.py").validate()
    assert len(task.choices) == 77
    assert len(task.examples("dev")) == 500
    assert len(task.examples("train")) + 500 == 10003
    assert len(task.examples("test")) == 3080
    assert all(e.intent in task.choices for e in task.examples("dev"))


@pytest.mark.parametrize(
    "body, match",
    [
        ("x = 1", "does not define a task"),
        ("raise RuntimeError('boom')", "importing the task module failed: RuntimeError: boom"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=[])", "has no .*dev|empty|cannot load"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=None)", "has no 'dev' split"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev='nowhere/dev.jsonl')", "nowhere/dev.jsonl: no such file"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=[{'text': 'x'}])", r"row 0 of split 'dev' has no value for field\(s\) \['label'\]"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=[{'label': 'positive'}])", r"no value for field\(s\) \['text'\]"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=[{'text': 'x', 'label': 'meh'}])", "label='meh', which is not one of the declared choices"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=GOOD, metric=lambda e, p, t=None: 1 / 0)", "metric .* raised ZeroDivisionError"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=GOOD, metric=lambda e, p, t=None: 'yes')", "returned 'yes' .*must return a number"),
        ("task = autoprompt.Task(name='t', program=42, train=GOOD, dev=GOOD)", "program must be a dspy.Signature"),
        ("task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev=GOOD, label_field='nope')", "label_field='nope' is not an output field"),
    ],
)
def test_bad_task_input_gets_a_named_error(tmp_path, body, match):
    path = write_task(tmp_path, body)
    with pytest.raises(TaskError, match=match) as info:
        autoprompt.load_task(path).validate()
    assert "Traceback" not in str(info.value)


def test_empty_split_file_names_the_file(tmp_path):
    empty = tmp_path / "dev.jsonl"
    empty.write_text("")
    path = write_task(tmp_path, f"task = autoprompt.Task(name='t', program=Sentiment, train=GOOD, dev={str(empty)!r})")
    with pytest.raises(DataError, match=str(empty)):
        autoprompt.load_task(path).validate()


def test_missing_task_file():
    with pytest.raises(TaskError, match="does not exist"):
        autoprompt.load_task("no/such/task.py")


def test_exact_match_metric_and_parse_failures_score_zero():
    metric = autoprompt.exact_match("label")
    assert metric(dspy.Example(label="positive"), dspy.Prediction(label="Positive ")) == 1.0
    assert metric(dspy.Example(label="positive"), dspy.Prediction(label="negative")) == 0.0
    task = autoprompt.Task(name="t", program="text -> label", train=[{"text": "a", "label": "b"}], dev=[{"text": "a", "label": "b"}])
    assert task.score(task.examples("dev")[0], None) == 0.0


def test_a_limit_is_a_seeded_sample_stratified_over_the_labels(sst2_dir):
    """Banking77's test file is sorted by label (40 rows each): its first 77 rows are two intents; a limit
    of 77 takes one row of each of the 77, and 231 three of each (the benchmarks' sample)."""
    import autoprompt

    task = autoprompt.load_task(TASKS / "banking77.py")
    first = task.examples("test", limit=77, seed=None)
    assert len({e.intent for e in first}) == 2
    sample = task.examples("test", limit=77)
    assert len(sample) == 77 and len({e.intent for e in sample}) == 77
    assert [e.text for e in task.examples("test", limit=77)] == [e.text for e in sample]  # seeded: the same rows
    assert [e.text for e in task.examples("test", limit=77, seed=1)] != [e.text for e in sample]
    import collections

    assert set(collections.Counter(e.intent for e in task.examples("test", limit=231)).values()) == {3}
    rows = task.examples("test")
    assert [rows.index(e) for e in sample] == sorted(rows.index(e) for e in sample)  # in the split's order
    sentiment = autoprompt.load_task(TASKS / "sentiment.py").examples("dev", limit=100)
    labels = [e.label for e in sentiment]
    assert abs(labels.count("positive") - labels.count("negative")) <= 10  # the split's own label shares


def test_feedback_text_for_gepa(small_task):
    """What GEPA's reflection LM reads about an answer: the gold and the predicted label by default."""
    import dspy

    example = small_task.examples("train", seed=None)[0]
    wrong = "negative" if example.label == "positive" else "positive"
    text = small_task.feedback_text(example, dspy.Prediction(label=wrong))
    assert text == (f"Wrong: the answer was {wrong!r}, but the correct label is {example.label!r} "
                    "(one of ['positive', 'negative']).")
    assert small_task.feedback_text(example, dspy.Prediction(label=example.label)).startswith("Correct")
    assert "could not be read" in small_task.feedback_text(example, None)
    scored = small_task.gepa_metric(example, dspy.Prediction(label=example.label))
    assert scored.score == 1.0 and scored.feedback.startswith("Correct")
    small_task.feedback = lambda e, p: 1 / 0
    with pytest.raises(autoprompt.TaskError, match="feedback function .* ZeroDivisionError"):
        small_task.feedback_text(example, None)
