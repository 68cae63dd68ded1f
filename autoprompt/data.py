"""Loading task splits through the `datasets` library.

A split source is one of:

- a path to a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file;
- a list of dicts (rows kept in memory);
- a ``datasets.Dataset``;
- :func:`hub` ``("owner/name", split="train")``: a Hugging Face hub id. autoprompt goes to the
  network only for a source built by :func:`hub`, never to guess.

Example:
    >>> from autoprompt.data import load_split
    >>> ds = load_split([{"text": "great film", "label": "positive"}])
    >>> ds[0]["label"]
    'positive'
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from autoprompt._exceptions import DataError, causes

if TYPE_CHECKING:
    import datasets

__all__ = ["HubSource", "Source", "carve", "describe", "hub", "load_split"]

logger = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class HubSource:
    """A split on the Hugging Face hub (or a local folder laid out like a hub repo)."""

    path: str
    split: str
    name: str | None = None

    def __str__(self) -> str:
        extra = f", name={self.name!r}" if self.name else ""
        return f"hub({self.path!r}, split={self.split!r}{extra})"


Source = Union[str, os.PathLike, list, "datasets.Dataset", HubSource]


def hub(path: str, split: str, name: str | None = None) -> HubSource:
    """Name a split on the Hugging Face hub, e.g. ``hub("stanfordnlp/sst2", split="train")``."""
    return HubSource(path=path, split=split, name=name)


def describe(source: Any) -> str:
    """A short human name for a source, used in error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, HubSource):
        return str(source)
    if isinstance(source, list):
        return f"an in-memory list of {len(source)} rows"
    return f"a {type(source).__name__}"


def load_split(source: Source) -> "datasets.Dataset":
    """Load one split as a ``datasets.Dataset``.

    Raises:
        DataError: the file is missing or unreadable, or the hub cannot be reached.
    """
    import datasets

    if isinstance(source, datasets.Dataset):
        return source
    if isinstance(source, list):
        if not all(isinstance(row, dict) for row in source):
            raise DataError("an in-memory split must be a list of dicts, one per example")
        return datasets.Dataset.from_list(source)
    if isinstance(source, HubSource):
        return _load_hub(source)
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source))
    raise DataError(
        f"cannot load a split from {type(source).__name__}; pass a file path, a list of dicts, "
        "a datasets.Dataset or autoprompt.data.hub('owner/name', split=...)"
    )


def _load_file(path: Path) -> "datasets.Dataset":
    import datasets

    builder = _BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_BUILDERS)}"
        )
    if not path.is_file():
        raise DataError(
            f"{path}: no such file. Fix the path in the task module, or to load from the "
            "Hugging Face hub use autoprompt.data.hub('owner/name', split=...)"
        )
    from datasets.utils import logging as datasets_logging

    # no "Generating train split" bar per local file (a small file converts in milliseconds, and the bars
    # buried one-line errors); the user's own setting is restored afterwards
    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    # a local file needs no network: datasets would still ping S3 to count a "download" of its csv/json
    # builder (datasets.load.increase_load_count); offline for this call only, the user's setting restored
    saved = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = True, False
    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL)  # its ERROR line repeats the error raised below
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for a malformed file: name the innermost cause
        cause = list(causes(exc))[-1]
        detail = f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
        raise DataError(f"{path}: cannot be read as {builder} ({detail}); fix the file or pass another "
                        "path") from exc
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved
        datasets_logging.set_verbosity(verbosity)
        if shown:
            datasets_logging.enable_progress_bar()


def _load_hub(source: HubSource) -> "datasets.Dataset":
    import datasets

    logger.info("loading %s through datasets", source)
    try:
        return datasets.load_dataset(source.path, source.name, split=source.split)
    except (ConnectionError, OSError, TimeoutError) as exc:
        raise DataError(
            f"{source}: the Hugging Face hub could not be reached ({type(exc).__name__}: {exc}). "
            "Without a network, download the data once elsewhere and point the task at local "
            "files, or set HF_HUB_OFFLINE=1 to use a copy already in the datasets cache."
        ) from exc
    except ValueError as exc:  # unknown split or config
        raise DataError(f"{source}: {exc}") from exc
    except Exception as exc:
        if "offline" in str(exc).lower() or "connect" in str(exc).lower():
            raise DataError(
                f"{source}: the Hugging Face hub could not be reached ({exc}). Point the task at "
                "local files instead."
            ) from exc
        raise DataError(f"{source}: {type(exc).__name__}: {exc}") from exc


def carve(
    dataset: "datasets.Dataset", size: int | float, *, seed: int = 0
) -> tuple["datasets.Dataset", "datasets.Dataset"]:
    """Split off a held-out part: returns ``(rest, carved)``; same seed, same split.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_list([{"x": i} for i in range(10)])
        >>> rest, dev = carve(ds, 3, seed=0)
        >>> len(rest), len(dev)
        (7, 3)
    """
    if isinstance(size, int) and not 0 < size < len(dataset):
        raise DataError(f"cannot carve {size} rows out of a split of {len(dataset)} rows")
    parts = dataset.train_test_split(test_size=size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
