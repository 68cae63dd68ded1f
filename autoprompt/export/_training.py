"""Compiling a program into fine-tuning data (BetterTogether's "w" step, first half).

The program runs over a split with DSPy tracing on; every example whose metric reaches
``threshold`` yields one training example per LM call of its trace, formatted with the same
JSONAdapter the program is optimized and served with. Answers
that do not parse are dropped and counted, never raised.

Formats: ``openai`` (chat fine-tuning JSONL: ``{"messages": [...]}``), ``trl`` (TRL's
conversational prompt/completion JSONL: ``{"prompt": [...], "completion": [...]}``) and ``hf``
(a ``datasets.Dataset`` saved with ``save_to_disk`` plus a parquet file per split). Each export
folder has ``manifest.json`` (format version, task, source program, LM, filter, counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from autoprompt._exceptions import ExportError
from autoprompt._version import __version__
from autoprompt.evaluate import run_one
from autoprompt.export._prompt import dump_json

__all__ = ["DATA_FORMATS", "TRAINING_FORMAT_VERSION", "TrainingData", "compile_training_data"]

logger = logging.getLogger(__name__)

TRAINING_FORMAT_VERSION = 1
DATA_FORMATS = ("openai", "hf", "trl")


@dataclass
class TrainingData:
    """Training examples compiled from a program's traces.

    Attributes:
        train, val: records ``{"predictor": name, "messages": [...]}`` (the last message is the
            assistant's answer).
        counts: examples run, kept, dropped by the metric, dropped as parse failures or LM
            errors, duplicates removed.
        manifest: what produced the data (written next to every export).
    """

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    counts: dict[str, int]
    manifest: dict[str, Any] = field(default_factory=dict)

    def by_predictor(self) -> dict[str, "TrainingData"]:
        """One data set per predictor (the default pools all predictors' calls together)."""
        names = sorted({r["predictor"] for r in self.train + self.val})
        return {
            n: TrainingData([r for r in self.train if r["predictor"] == n], [r for r in self.val if r["predictor"] == n],
                            self.counts, {**self.manifest, "predictor": n})
            for n in names
        }

    def save(self, folder: str | Path, format: str = "openai") -> Path:
        """Write the data in ``format`` (``openai``, ``hf`` or ``trl``) with its manifest into ``folder``."""
        if format not in DATA_FORMATS:
            raise ExportError(f"format must be one of {list(DATA_FORMATS)}, got {format!r}")
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        splits = {"train": self.train, "val": self.val}
        files = []
        for split, records in splits.items():
            if not records and split == "val":
                continue
            rows = [_row(r, format) for r in records]
            if format == "hf":
                import datasets

                ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"messages": []})
                ds.save_to_disk(str(out / split))
                ds.to_parquet(str(out / f"{split}.parquet"))
                files += [f"{split}/", f"{split}.parquet"]
            else:
                with open(out / f"{split}.jsonl", "w") as f:
                    for row in rows:
                        f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                files.append(f"{split}.jsonl")
        manifest = {**self.manifest, "data_format": format, "files": files,
                    "rows": {s: len(r) for s, r in splits.items()}}
        (out / "manifest.json").write_text(dump_json(manifest))
        return out


def _row(record: dict[str, Any], format: str) -> dict[str, Any]:
    messages = record["messages"]
    if format == "trl":
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"messages": messages}


def compile_training_data(
    program: dspy.Module,
    task: Any,
    *,
    split: str = "train",
    threshold: float = 1.0,
    keep_demos: bool = False,
    dedupe: bool = True,
    val_fraction: float = 0.0,
    limit: int | None = None,
    seed: int = 0,
    source: str | None = None,
    answers: str = "program",
    progress: bool = True,
) -> TrainingData:
    """Run ``program`` over a split (with the current DSPy LM) and keep the passing traces.

    Args:
        threshold: keep an example when ``task.score(example, prediction) >= threshold``.
        keep_demos: keep the program's demos in the training prompts (BetterTogether trains on the
            plain prompts: the default drops them).
        dedupe: drop records whose messages are identical.
        val_fraction: share of the kept records held out as a validation split (seeded).
        limit: use only the first N examples of the split.
        source: where the program came from (a prompt file, a run), for the manifest.
        answers: ``"program"`` (BetterTogether: the program's own answers, kept when the metric
            passes) or ``"gold"`` (the split's labels as the answers to the program's prompts, no
            LM call: plain supervised fine-tuning; single-predictor programs only).
    """
    from tqdm.auto import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise ExportError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if answers not in ("program", "gold"):
        raise ExportError(f"answers must be 'program' or 'gold', got {answers!r}")
    predictors = program.named_predictors()
    if answers == "gold" and len(predictors) != 1:
        raise ExportError(f"answers='gold' needs a single-predictor program; this one has {len(predictors)} "
                          "predictors (their intermediate answers have no labels): use answers='program'")
    adapter = dspy.JSONAdapter()
    names = {id(p): n for n, p in program.named_predictors()}
    counts = {"examples": 0, "kept_examples": 0, "dropped_metric": 0, "dropped_parse": 0, "dropped_error": 0,
              "records": 0, "duplicates": 0}
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    examples = task.examples(split, limit=limit)
    for example in tqdm(examples, desc=f"compile {split}", disable=not progress, unit="ex", leave=False):
        counts["examples"] += 1
        if answers == "gold":  # the labels answer the program's prompt; nothing to run or filter
            predictor = predictors[0][1]
            outputs = {k: example[k] for k in predictor.signature.output_fields if k in example}
            if len(outputs) != len(predictor.signature.output_fields):
                raise ExportError(f"answers='gold': a {split} example lacks output fields "
                                  f"{sorted(set(predictor.signature.output_fields) - set(outputs))}")
            counts["kept_examples"] += 1
            _add(records, seen, counts, adapter, predictor, names, dict(example.inputs()), outputs, keep_demos, dedupe)
            continue
        with dspy.context(trace=[], adapter=adapter):
            prediction, failure = run_one(program, example)
            trace = list(dspy.settings.trace)
        if failure == "parse":
            counts["dropped_parse"] += 1
            continue
        if failure is not None:
            counts["dropped_error"] += 1
            continue
        if task.score(example, prediction) < threshold:
            counts["dropped_metric"] += 1
            continue
        counts["kept_examples"] += 1
        for predictor, inputs, outputs in trace:
            _add(records, seen, counts, adapter, predictor, names, dict(inputs), dict(outputs), keep_demos, dedupe)
    counts["records"] = len(records)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(records)))
    val = [records[i] for i in sorted(order[:n_val])]
    train = [records[i] for i in sorted(order[n_val:])]
    lm = dspy.settings.lm
    manifest = {
        "format": "autoprompt.training-data",
        "format_version": TRAINING_FORMAT_VERSION,
        "autoprompt_version": __version__,
        "task": task.name,
        "split": split,
        "source_program": source,
        "lm": getattr(lm, "model", None),
        "filter": {"metric": getattr(task.metric, "__name__", repr(task.metric)), "threshold": threshold},
        "options": {"keep_demos": keep_demos, "dedupe": dedupe, "val_fraction": val_fraction, "limit": limit,
                    "seed": seed, "answers": answers},
        "counts": counts,
    }
    logger.info("training data: %s", counts)
    return TrainingData(train=train, val=val, counts=counts, manifest=manifest)


def _add(records: list, seen: set, counts: dict, adapter: Any, predictor: Any, names: dict, inputs: dict,
         outputs: dict, keep_demos: bool, dedupe: bool) -> None:
    """One training record: the messages the adapter sends for ``inputs`` and the answer ``outputs``."""
    demos = [d.toDict() if hasattr(d, "toDict") else dict(d) for d in predictor.demos] if keep_demos else []
    # JSONAdapter has no format_finetune_data: the same two calls ChatAdapter's makes
    messages = adapter.format(predictor.signature, demos, inputs) + [{
        "role": "assistant",
        "content": adapter.format_assistant_message_content(predictor.signature, outputs),
    }]
    key = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()
    if dedupe and key in seen:
        counts["duplicates"] += 1
        return
    seen.add(key)
    records.append({"predictor": names.get(id(predictor), "?"), "messages": messages})
