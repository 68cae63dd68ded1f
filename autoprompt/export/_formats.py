"""The prompt file formats: ``json`` (loads back), ``messages`` (any chat client), ``text``."""

from __future__ import annotations

import json
from typing import Any

from autoprompt.export._base import BaseExporter
from autoprompt.export._prompt import dump_json
from autoprompt.export._render import json_schema, render_messages, signature_from_spec

__all__ = ["JsonExporter", "MessagesExporter", "TextExporter"]

MESSAGES_FORMAT_VERSION = 1

RETRIEVAL_RULE = (
    "This predictor's demos are chosen per input; 'messages' holds none. For each call: the tokens of an "
    "example are, for each input field in order, the matches of [a-z0-9]+(?:[.,][0-9]+)* in its lower-cased "
    "value, each written '<field>:<match>'; score every pool example "
    "with Okapi BM25 (k1, b as given; idf = ln(1 + (N - df + 0.5) / (df + 0.5)); each distinct query "
    "token once); skip an example whose input fields equal the call's; take the k best, best first (ties: "
    "the earlier pool example); with 'order' 'vote', regroup that list by its 'label_field' values: the label "
    "most of them carry first, then the others by fewer, ties to the label whose best example ranks higher, "
    "each group keeping its order; insert the list reversed (the last demo is the best one, with 'vote' the "
    "vote's best one) as demo turns (a user message with the input fields, "
    "an assistant message with the output fields as JSON) between the system message and the final user "
    "message. autoprompt.render_messages(prompt_json, inputs) renders exactly these messages."
)

LABEL_PRIOR_RULE = (
    "This predictor adds a prior from its neighbours' labels to its label choice at each call. For each call: "
    "find the k nearest pool examples as for 'demos_per_input' (the same tokens, BM25 with k1 and b as given in "
    "'retrieval', the same skip and ties; k as given here); count n_l, how many carry each label l of "
    "'choices' in 'label_field'; prior_l = weight * ln((n_l + 0.5) / (k' + 0.5 * L)) + bias_l (k' the examples "
    "counted, L the number of labels, bias_l 0 when not given); subtract the mean of prior over the labels; add "
    "each label's value to its first token's id in 'token_ids' as an OpenAI logit_bias (on top of "
    "'generation.logit_bias' when there is one), clipped to [-100, 100]. Token ids of the model in 'lm'."
)


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
            entry = {
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
            if spec.get("retrieval"):
                entry["demos_per_input"] = {**spec["retrieval"], "rule": RETRIEVAL_RULE}
            if spec.get("label_prior"):
                entry["logit_bias_per_input"] = {**spec["label_prior"], "rule": LABEL_PRIOR_RULE}
            bias = spec.get("config", {}).get("logit_bias")
            if bias:  # a calibrated label choice (autoprompt._calibration): send it with every call
                entry["generation"]["logit_bias"] = bias
                entry["generation"]["logit_bias_note"] = (
                    "token ids of the model in 'lm' (its GGUF's tokenizer): valid for that model only, e.g. "
                    "llama.cpp's server; OpenAI's meaning (added to the token's logit)")
            out.append(entry)
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
            if spec.get("retrieval"):
                r = spec["retrieval"]
                lines.append(f"# Demos are chosen per input ({r['k']} nearest of {len(r['pool'])} labelled examples, "
                             f"{r['method']}): this text cannot carry them and shows the prompt without demos. "
                             "The json and messages exports carry the pool and the rule.")
            if spec.get("label_prior"):
                p = spec["label_prior"]
                lines.append(f"# Each call adds a prior from its {p['k']} nearest labelled examples' labels as a logit_bias "
                             f"(weight {p['weight']:g}): this text cannot carry it, and without it the answers differ. "
                             "The json and messages exports carry the pool and the rule.")
            if spec.get("config", {}).get("logit_bias"):
                lines.append(f"# Calibrated label choice: send logit_bias {json.dumps(spec['config']['logit_bias'], sort_keys=True)} "
                             "(token ids of the model in 'lm') with every call; without it the answers differ.")
            for message in render_messages(document, predictor=spec["name"]):
                lines.append(f"\n=== {message['role']} ===")
                lines.append(message["content"])
        return "\n".join(lines) + "\n"
