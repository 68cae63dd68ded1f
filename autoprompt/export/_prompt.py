"""The versioned prompt document, and loading it back into a task's program.

Shape (``format_version`` 1; keys sorted, 2-space indent, so the same program gives the same bytes;
``format_version`` 2 when a predictor retrieves its demos per input: it then has a ``retrieval`` entry,
``{"method": "bm25", "k", "input_fields", "pool", "k1", "b"}``, and empty ``demos``; ``format_version`` 3
when those demos are ordered by their labels' vote: the entry adds ``"order": "vote"`` and ``label_field``;
``format_version`` 4 when a predictor adds its neighbours' label prior to each call: a ``label_prior`` entry,
:meth:`autoprompt._vote_prior.LabelPrior.spec`)::

    {"format": "autoprompt.prompt", "format_version": 1, "autoprompt_version": "0.1.0",
     "task": "sentiment", "lm": {...}, "seed": 0, "optimizer": "optuna", "scores": {...},
     "adapter": "CompactJSONAdapter",  (documents before it: "JSONAdapter"; see autoprompt._adapter)
     "predictors": [{"name": "self", "instruction": "...",
                     "fields": {"inputs": [{"name", "type", "description"}],
                                "outputs": [{"name", "type", "description", "choices"}]},
                     "demos": [{"text": "...", "label": "positive"}]}]}
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import dspy

from autoprompt._adapter import ADAPTER_NAME
from autoprompt._exceptions import ExportError
from autoprompt._retrieval import Retriever, attach, retriever_of
from autoprompt._vote_prior import LabelPrior, attach_prior, prior_of
from autoprompt._version import __version__
from autoprompt.store import dump_json

__all__ = ["FORMAT", "FORMAT_VERSION", "dump_json", "load_prompt", "prompt_document", "read_prompt"]

FORMAT = "autoprompt.prompt"
FORMAT_VERSION = 1
RETRIEVAL_FORMAT_VERSION = 2  # written when a predictor retrieves demos; read: all three
VOTE_ORDER_FORMAT_VERSION = 3  # ... and orders them by vote (a reader of 2 would order them by similarity)
LABEL_PRIOR_FORMAT_VERSION = 4  # a predictor adds its neighbours' label prior (a reader of 3 would drop it)
READS = (FORMAT_VERSION, RETRIEVAL_FORMAT_VERSION, VOTE_ORDER_FORMAT_VERSION, LABEL_PRIOR_FORMAT_VERSION)


def _field(name: str, info: Any) -> dict[str, Any]:
    annotation = info.annotation
    out: dict[str, Any] = {
        "name": name,
        "type": getattr(annotation, "__name__", None) or str(annotation),
        "description": (info.json_schema_extra or {}).get("desc", ""),
    }
    if typing.get_origin(annotation) is typing.Literal:
        out["type"] = "Literal"
        out["choices"] = [str(v) for v in typing.get_args(annotation)]
    return out


def prompt_document(program: dspy.Module, *, task: Any, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe every predictor of ``program``: instruction, fields, demos (plus run metadata)."""
    predictors = []
    for name, predictor in program.named_predictors():
        sig = predictor.signature
        demos = []
        for demo in predictor.demos:
            d = demo.toDict() if hasattr(demo, "toDict") else dict(demo)
            demos.append({k: v for k, v in d.items() if k in sig.fields})
        entry = {
            "name": name,
            "instruction": sig.instructions,
            "fields": {
                "inputs": [_field(n, f) for n, f in sig.input_fields.items()],
                "outputs": [_field(n, f) for n, f in sig.output_fields.items()],
            },
            "demos": demos,
            "config": dict(predictor.config or {}),
        }
        retriever = retriever_of(predictor)
        if retriever is not None:
            entry["retrieval"] = retriever.spec()
        prior = prior_of(predictor)
        if prior is not None:
            entry["label_prior"] = prior.spec()
        predictors.append(entry)
    retrieves = any("retrieval" in p for p in predictors)
    votes = any(p.get("retrieval", {}).get("order", "similarity") != "similarity" for p in predictors)
    priors = any("label_prior" in p for p in predictors)
    document = {
        "format": FORMAT,
        "format_version": LABEL_PRIOR_FORMAT_VERSION if priors else VOTE_ORDER_FORMAT_VERSION if votes else
        RETRIEVAL_FORMAT_VERSION if retrieves else FORMAT_VERSION,
        "autoprompt_version": __version__,
        "task": task.name,
        "adapter": ADAPTER_NAME,
        "predictors": predictors,
    }
    document.update(meta or {})
    return document


def read_prompt(source: str | Path | dict) -> dict[str, Any]:
    """Read and check a prompt document (a path or an already-parsed dict)."""
    if isinstance(source, dict):
        document, where = source, "<dict>"
    else:
        where = str(source)
        try:
            document = json.loads(Path(source).read_text())
        except FileNotFoundError as exc:
            raise ExportError(f"{where}: no such prompt file") from exc
        except json.JSONDecodeError as exc:
            raise ExportError(f"{where}: not valid JSON ({exc})") from exc
    if document.get("format") != FORMAT:
        raise ExportError(f"{where}: not an autoprompt prompt file (format={document.get('format')!r})")
    version = document.get("format_version")
    if version not in READS:
        raise ExportError(
            f"{where}: format_version {version!r} is not supported by autoprompt {__version__} "
            f"(reads versions {', '.join(map(str, READS))}); upgrade autoprompt or re-export the prompt"
        )
    return document


def load_prompt(source: str | Path | dict, task: Any) -> dspy.Module:
    """Load a prompt document into a fresh copy of ``task``'s program.

    Raises:
        ExportError: the file is not a prompt document, or its predictors or fields do not match
            the task's program.
    """
    document = read_prompt(source)
    program = task.make_program()
    if document.get("task_params"):
        if task.configure is None:
            raise ExportError(
                f"the prompt was found with task parameters {document['task_params']}, but task "
                f"{task.name!r} has no configure() to apply them"
            )
        program = task.configure(program, dict(document["task_params"]))
    by_name = {p["name"]: p for p in document["predictors"]}
    names = [name for name, _ in program.named_predictors()]
    if sorted(by_name) != sorted(names):
        raise ExportError(
            f"the prompt file has predictors {sorted(by_name)} but the program of task "
            f"{task.name!r} has {sorted(names)}; export it from a run of this task"
        )
    for name, predictor in program.named_predictors():
        spec = by_name[name]
        sig = predictor.signature
        want = [f["name"] for f in spec["fields"]["inputs"] + spec["fields"]["outputs"]]
        if want != list(sig.fields):
            raise ExportError(
                f"predictor {name!r}: the prompt file has fields {want} but the task's signature "
                f"has {list(sig.fields)}"
            )
        predictor.signature = sig.with_instructions(spec["instruction"])
        predictor.demos = [dspy.Example(**d) for d in spec["demos"]]
        if spec.get("retrieval"):
            try:
                attach(predictor, Retriever.from_spec(spec["retrieval"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ExportError(f"predictor {name!r}: its demo retrieval cannot be rebuilt ({exc})") from exc
        if spec.get("label_prior"):
            try:
                attach_prior(predictor, LabelPrior.from_spec(spec["label_prior"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ExportError(f"predictor {name!r}: its label prior cannot be rebuilt ({exc})") from exc
        if spec.get("config"):
            predictor.config = dict(spec["config"])
    return program
