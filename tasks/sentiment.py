"""Binary sentiment of a movie-review sentence (SST-2).

Data, in this order:
1. ``data="<hub id>"`` (e.g. ``stanfordnlp/sst2``): the Hugging Face hub, only when named;
   train -> train/dev (dev carved out, 436 rows), validation -> test.
2. ``../shared/data/sst2`` (or ``$AUTOPROMPT_DATA_DIR/sst2``) when present: train.jsonl for
   training; the 872-row GLUE dev set, split in two halves by a seeded shuffle, for dev and test.
3. otherwise a small set written for this project (``tasks/data/sentiment_small``): 40/20/20.

Options (``--task-option key=value``): ``data`` (a hub id or a folder with train.jsonl and
dev.jsonl), ``seed`` (the dev/test split).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import dspy

import autoprompt
from autoprompt.data import carve, hub, load_split

HERE = Path(__file__).resolve().parent


class Sentiment(dspy.Signature):
    """Classify the sentiment of a movie-review sentence."""

    text: str = dspy.InputField()
    label: Literal["positive", "negative"] = dspy.OutputField()


def _shared_dir() -> Path:
    root = os.environ.get("AUTOPROMPT_DATA_DIR")
    return Path(root) / "sst2" if root else HERE.parent.parent / "shared" / "data" / "sst2"


def _hub_label(row: dict) -> dict:
    label = row["label"]
    if isinstance(label, int):
        row["label"] = ["negative", "positive"][label] if label in (0, 1) else None
    return row


def make_task(data: str | None = None, seed: int | str = 0) -> autoprompt.Task:
    seed = int(seed)
    common = dict(name="sentiment", program=Sentiment, source=str(Path(__file__)))
    folder = Path(data) if data else _shared_dir()
    if data and not folder.is_dir():
        # a hub id, named by the user: the only case that goes to the network
        train, dev = carve(load_split(hub(data, split="train")), 436, seed=seed)
        test = load_split(hub(data, split="validation"))
        return autoprompt.Task(train=train, dev=dev, test=test, columns={"sentence": "text"},
                               prepare=_hub_label, **common)
    if (folder / "train.jsonl").is_file():
        dev, test = carve(load_split(folder / "dev.jsonl"), 0.5, seed=seed)
        return autoprompt.Task(train=str(folder / "train.jsonl"), dev=dev, test=test, **common)
    small = HERE / "data" / "sentiment_small"
    return autoprompt.Task(
        train=str(small / "train.jsonl"), dev=str(small / "dev.jsonl"), test=str(small / "test.jsonl"), **common
    )
