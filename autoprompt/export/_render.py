"""Rebuild a DSPy signature from a prompt document and render the exact chat messages DSPy sends.

The messages come from the adapter the document names (autoprompt's :class:`CompactJSONAdapter`, DSPy's
JSONAdapter for documents written before it), the one the program was optimized and scored with, so
a prompt rendered here and sent by any client is the prompt that was scored.
"""

from __future__ import annotations

import typing
from typing import Any

import dspy

from autoprompt._adapter import adapter_named
from autoprompt._exceptions import ExportError

__all__ = ["PLACEHOLDER", "json_schema", "render_messages", "signature_from_spec"]

PLACEHOLDER = "{{{{{name}}}}}"  # renders as {{name}}

_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


def _annotation(field: dict[str, Any]) -> Any:
    if field.get("type") == "Literal":
        return typing.Literal[tuple(field["choices"])]
    return _TYPES.get(field.get("type", "str"), str)


def signature_from_spec(spec: dict[str, Any]) -> type[dspy.Signature]:
    """The ``dspy.Signature`` a predictor entry of a prompt document describes."""
    fields: dict[str, Any] = {}
    for f in spec["fields"]["inputs"]:
        fields[f["name"]] = (_annotation(f), dspy.InputField(desc=f.get("description") or None))
    for f in spec["fields"]["outputs"]:
        fields[f["name"]] = (_annotation(f), dspy.OutputField(desc=f.get("description") or None))
    return dspy.Signature(fields, spec["instruction"])


def json_schema(signature: type[dspy.Signature]) -> dict[str, Any]:
    """The JSON schema DSPy's JSONAdapter (and CompactJSONAdapter, its subclass) asks the LM to follow."""
    # DSPy builds this schema in private helpers; we call the same ones (dspy is pinned <3.5) so
    # that the exported schema is byte-for-byte the one the optimized program was scored with.
    from dspy.adapters.json_adapter import _get_structured_outputs_response_format
    from dspy.clients.legacy_requests import _strict_json_schema

    model = _get_structured_outputs_response_format(signature)
    return _strict_json_schema(model.model_json_schema())


def _predictor(document: dict[str, Any], name: str | None) -> dict[str, Any]:
    predictors = document["predictors"]
    if name is None:
        if len(predictors) != 1:
            raise ExportError(
                f"the prompt has {len(predictors)} predictors {[p['name'] for p in predictors]}; "
                "name the one to render"
            )
        return predictors[0]
    for p in predictors:
        if p["name"] == name:
            return p
    raise ExportError(f"no predictor {name!r} in the prompt; it has {[p['name'] for p in predictors]}")


def render_messages(
    document: dict[str, Any], inputs: dict[str, Any] | None = None, *, predictor: str | None = None
) -> list[dict[str, str]]:
    """The chat messages for one call of a predictor.

    Args:
        document: a prompt document (see :func:`autoprompt.load_prompt`'s file format).
        inputs: values of the input fields; ``None`` leaves ``{{field}}`` placeholders (and, for a
            predictor that retrieves its demos per input, renders it without demos).
        predictor: which predictor (only needed when there are several).

    Example:
        >>> doc = {"predictors": [{"name": "self", "instruction": "Classify.", "demos": [],
        ...        "fields": {"inputs": [{"name": "text", "type": "str"}],
        ...                   "outputs": [{"name": "label", "type": "str"}]}}]}
        >>> render_messages(doc, {"text": "so good"})[-1]["content"].splitlines()[:2]
        ['[[ ## text ## ]]', 'so good']
    """
    spec = _predictor(document, predictor)
    signature = signature_from_spec(spec)
    placeholders = inputs is None  # a template: a predictor that retrieves demos shows none
    if inputs is None:
        inputs = {name: PLACEHOLDER.format(name=name) for name in signature.input_fields}
    missing = [n for n in signature.input_fields if n not in inputs]
    if missing:
        raise ExportError(f"inputs {missing} are missing; the prompt needs {list(signature.input_fields)}")
    demos = [dspy.Example(**d) for d in spec["demos"]]
    if spec.get("retrieval") and not placeholders:  # per-input demos: the ones this input gets
        from autoprompt._retrieval import Retriever

        demos = Retriever.from_spec(spec["retrieval"])(dict(inputs))
    try:
        adapter = adapter_named(document.get("adapter"))
    except ValueError as exc:
        raise ExportError(f"the prompt's 'adapter': {exc}") from exc
    return adapter.format(signature, demos, dict(inputs))
