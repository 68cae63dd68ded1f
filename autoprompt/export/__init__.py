"""Exporting the optimized prompt (a versioned JSON document, chat messages, or text) and
compiling a program's passing traces into fine-tuning data (OpenAI JSONL, Hugging Face, TRL).

:func:`export_prompt` writes one format; :func:`load_prompt` reads the JSON back into a task's
program; :func:`render_messages` gives the exact messages for given inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoprompt._exceptions import ExportError
from autoprompt.export._base import BaseExporter
from autoprompt.export._formats import JsonExporter, MessagesExporter, TextExporter
from autoprompt.export._prompt import FORMAT_VERSION, dump_json, load_prompt, prompt_document, read_prompt
from autoprompt.export._render import json_schema, render_messages, signature_from_spec
from autoprompt.export._training import DATA_FORMATS, TrainingData, compile_training_data, split_validation
from autoprompt.store import atomic_write

__all__ = [
    "DATA_FORMATS",
    "EXPORTERS",
    "FORMAT_VERSION",
    "BaseExporter",
    "JsonExporter",
    "MessagesExporter",
    "TextExporter",
    "TrainingData",
    "compile_training_data",
    "dump_json",
    "export_prompt",
    "json_schema",
    "load_prompt",
    "prompt_document",
    "read_prompt",
    "render_messages",
    "signature_from_spec",
    "split_validation",
]

EXPORTERS: dict[str, type[BaseExporter]] = {c.name: c for c in (JsonExporter, MessagesExporter, TextExporter)}


def export_prompt(document: dict[str, Any] | str | Path, path: str | Path, format: str = "json") -> Path:
    """Write a prompt document (or a prompt file) in ``format`` (json, messages or text) to ``path``."""
    if format not in EXPORTERS:
        raise ExportError(f"format must be one of {sorted(EXPORTERS)}, got {format!r}")
    document = read_prompt(document)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, EXPORTERS[format]().render(document))
