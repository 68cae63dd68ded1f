"""The prompt file formats: ``json`` (loads back), ``messages`` (any chat client), ``text``."""

from __future__ import annotations

from typing import Any

from autoprompt.export._base import BaseExporter
from autoprompt.export._prompt import dump_json
from autoprompt.export._render import json_schema, render_messages, signature_from_spec

__all__ = ["JsonExporter", "MessagesExporter", "TextExporter"]

MESSAGES_FORMAT_VERSION = 1


class JsonExporter(BaseExporter):
    """The versioned prompt document itself; :func:`autoprompt.load_prompt` reads it back."""

    name = "json"
    suffix = ".json"

    def render(self, document: dict[str, Any]) -> str:
        return dump_json(document)


class MessagesExporter(BaseExporter):
    """Plain chat messages with ``{{field}}`` placeholders, the JSON schema of the answer, and the
    decoding settings: everything a client without DSPy needs to send the same prompt."""

    name = "messages"
    suffix = ".messages.json"

    def render(self, document: dict[str, Any]) -> str:
        out = []
        for spec in document["predictors"]:
            sig = signature_from_spec(spec)
            schema = json_schema(sig)
            out.append(
                {
                    "predictor": spec["name"],
                    "inputs": list(sig.input_fields),
                    "outputs": list(sig.output_fields),
                    "placeholder": "{{<input field>}}",
                    "messages": render_messages(document, predictor=spec["name"]),
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "DSPyProgramOutputs", "schema": schema, "strict": True},
                    },
                    "generation": {"temperature": spec.get("config", {}).get("temperature", 0.0)},
                }
            )
        return dump_json(
            {
                "format": "autoprompt.messages",
                "format_version": MESSAGES_FORMAT_VERSION,
                "autoprompt_version": document.get("autoprompt_version"),
                "task": document.get("task"),
                "lm": document.get("lm"),
                "scores": document.get("scores"),
                "predictors": out,
            }
        )


class TextExporter(BaseExporter):
    """The same messages as readable text, to paste into a playground or another tool."""

    name = "text"
    suffix = ".txt"

    def render(self, document: dict[str, Any]) -> str:
        lines = [
            f"# autoprompt prompt for task {document.get('task')!r} "
            f"(format_version {document.get('format_version')}, autoprompt {document.get('autoprompt_version')})",
            "# Replace each {{field}} with its value. The answer is a JSON object with the output fields.",
        ]
        for spec in document["predictors"]:
            sig = signature_from_spec(spec)
            lines.append(f"\n######## predictor {spec['name']}: {', '.join(sig.input_fields)} -> "
                         f"{', '.join(sig.output_fields)}")
            for message in render_messages(document, predictor=spec["name"]):
                lines.append(f"\n=== {message['role']} ===")
                lines.append(message["content"])
        return "\n".join(lines) + "\n"
