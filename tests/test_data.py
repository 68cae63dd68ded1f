"""Split sources through `datasets`: files, lists, and the hub code path (tested on local folders)."""

from __future__ import annotations

import json
import time

import datasets
import pytest

from autoprompt import DataError
from autoprompt.data import carve, hub, load_split

ROWS = [{"text": f"t{i}", "label": "positive" if i % 2 else "negative"} for i in range(10)]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    ds = datasets.Dataset.from_list(ROWS)
    {".jsonl": ds.to_json, ".csv": lambda p: ds.to_csv(p, index=False), ".parquet": ds.to_parquet}[suffix](str(path))
    loaded = load_split(path)
    assert loaded.to_list() == ROWS


def test_in_memory_list_and_dataset():
    assert load_split(ROWS).to_list() == ROWS
    ds = datasets.Dataset.from_list(ROWS)
    assert load_split(ds) is ds


def test_hub_code_path_on_a_local_repo_folder(tmp_path):
    """A folder laid out like a hub data set repo goes through the same load_dataset call as a hub id."""
    repo = tmp_path / "owner_sst2"
    (repo / "data").mkdir(parents=True)
    with open(repo / "data" / "train.jsonl", "w") as f:
        for row in ROWS:
            f.write(json.dumps(row) + "\n")
    with open(repo / "data" / "validation.jsonl", "w") as f:
        for row in ROWS[:4]:
            f.write(json.dumps(row) + "\n")
    assert len(load_split(hub(str(repo), split="train"))) == 10
    assert len(load_split(hub(str(repo), split="validation"))) == 4
    with pytest.raises(DataError, match="split"):
        load_split(hub(str(repo), split="nope"))


def test_unreachable_hub_is_a_clear_error_quickly():
    started = time.monotonic()
    with pytest.raises(DataError, match="autoprompt-no-such/dataset") as info:
        load_split(hub("autoprompt-no-such/dataset", split="train"))
    assert time.monotonic() - started < 20
    assert "local files" in str(info.value)


def test_bad_sources():
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_split("rows.txt")
    with pytest.raises(DataError, match="list of dicts"):
        load_split([1, 2])
    with pytest.raises(DataError, match="cannot load a split from int"):
        load_split(3)


def test_carve_is_seeded():
    ds = datasets.Dataset.from_list(ROWS)
    a = carve(ds, 3, seed=1)[1].to_list()
    assert a == carve(ds, 3, seed=1)[1].to_list()
    assert len(a) == 3
