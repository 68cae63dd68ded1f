"""Iris species from four measurements: the feature-based classification task of BetterTogether.

The 150 measurements (Fisher 1936) ship as ``tasks/data/iris.csv``; a seeded shuffle splits them
50 / 50 / 50 into train, dev and test. Option: ``seed``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dspy

import autoprompt
from autoprompt.data import carve, load_split

HERE = Path(__file__).resolve().parent


class Iris(dspy.Signature):
    """Given the petal and sepal dimensions in cm, predict the iris species."""

    sepal_length: float = dspy.InputField()
    sepal_width: float = dspy.InputField()
    petal_length: float = dspy.InputField()
    petal_width: float = dspy.InputField()
    species: Literal["setosa", "versicolor", "virginica"] = dspy.OutputField()


def make_task(seed: int | str = 0) -> autoprompt.Task:
    rows = load_split(HERE / "data" / "iris.csv")
    rest, test = carve(rows, 50, seed=int(seed))
    train, dev = carve(rest, 50, seed=int(seed))
    return autoprompt.Task(name="iris", program=Iris, train=train, dev=dev, test=test, source=str(Path(__file__)))
