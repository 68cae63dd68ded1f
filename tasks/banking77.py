"""Banking77: the intent of a customer-service message, one of 77 categories.

Data: ``../shared/data/banking77`` (or ``$AUTOPROMPT_DATA_DIR/banking77``): train.csv and test.csv
(fields ``text``, ``category``) and categories.json. The dev split (500 rows by default) is carved
out of train with a seeded shuffle. ``data="PolyAI/banking77"`` loads the hub copy instead (its
labels are integers, mapped through categories.json or the data set's label names).
Options: ``data``, ``dev_size``, ``seed``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import dspy

import autoprompt
from autoprompt.data import carve, hub, load_split

HERE = Path(__file__).resolve().parent


def _shared_dir() -> Path:
    root = os.environ.get("AUTOPROMPT_DATA_DIR")
    return Path(root) / "banking77" if root else HERE.parent.parent / "shared" / "data" / "banking77"


def make_task(data: str | None = None, dev_size: int | str = 500, seed: int | str = 0) -> autoprompt.Task:
    folder = Path(data) if data else _shared_dir()
    hub_id = data if data and not folder.is_dir() else None
    if hub_id:
        train_all = load_split(hub(hub_id, split="train"))
        test = load_split(hub(hub_id, split="test"))
        categories = train_all.features["label"].names
    else:
        if not (folder / "categories.json").is_file():
            raise autoprompt.DataError(
                f"banking77 data not found in {folder} (need train.csv, test.csv, categories.json); "
                "set AUTOPROMPT_DATA_DIR or pass --task-option data=PolyAI/banking77 with a network"
            )
        categories = json.loads((folder / "categories.json").read_text())
        train_all = load_split(folder / "train.csv")
        test = load_split(folder / "test.csv")

    intent_type = Literal[tuple(categories)]  # type: ignore[valid-type]
    intent = dspy.Signature(
        {"text": (str, dspy.InputField()), "intent": (intent_type, dspy.OutputField())},
        "Classify the intent of a banking customer's message into one of the categories.",
    )

    def prepare(row: dict) -> dict:
        if isinstance(row.get("intent"), int):
            row["intent"] = categories[row["intent"]]
        return row

    train, dev = carve(train_all, int(dev_size), seed=int(seed))
    return autoprompt.Task(
        name="banking77", program=intent, train=train, dev=dev, test=test,
        columns={"category": "intent", "label": "intent"}, prepare=prepare, source=str(Path(__file__)),
    )
