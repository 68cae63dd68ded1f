"""Contextual calibration of a label choice (Zhao et al. 2021, "Calibrate Before Use").

A small model answers one label for nearly every input (the 135M model zero-shot on SST-2: "positive").
Calibration asks the program's prompt about content-free inputs ("N/A", "", "[MASK]"), reads the model's
probability of each label where the label is chosen, and adds ``-log p_cf(label)`` (centred) to the logit
of the label's first token at every call: the choice then compares ``p(label | input) / p_cf(label)``.
For a grammar-constrained greedy answer this is exact when the labels start with different tokens.

The bias is an OpenAI ``logit_bias`` (token id -> added logit) in the predictor's config: DSPy passes it to
the LM, the prompt file keeps it, the ``messages`` export carries it. Token ids belong to one tokenizer,
so calibration needs the embedded llama.cpp engine (to read the probabilities and the ids); with any other
LM it is not offered. Measured on its own: ``benchmarks/results/search_moves.md``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import dspy

from autoprompt._adapter import CompactJSONAdapter

__all__ = ["CONTENT_FREE", "calibrate_program", "label_bias", "label_distribution", "local_engine", "with_logit_bias"]

logger = logging.getLogger(__name__)

CONTENT_FREE = ("N/A", "", "[MASK]")
MAX_BIAS = 100.0  # OpenAI's range for logit_bias values


def local_engine(lm: Any = None) -> Any:
    """The embedded llama.cpp engine that answers ``lm`` (default: DSPy's current LM), or ``None``."""
    from autoprompt.lms._local import engine_for

    lm = lm if lm is not None else dspy.settings.lm
    return engine_for(getattr(lm, "model", None))


def label_bias(predictor: dspy.Predict, *, field: str, choices: list[str], lm: Any = None, strength: float = 1.0
               ) -> dict[str, float] | None:
    """The calibrating ``logit_bias`` of ``predictor``'s choice of ``field`` among ``choices`` (its current
    instruction and demos), from ``len(CONTENT_FREE)`` metered LM calls (answered from DSPy's cache when the
    LM caches); ``None`` when it cannot be had
    (not the embedded engine, labels sharing a first token, the answer never reaching the field).
    ``strength`` scales it: 1.0 is Zhao et al.'s full correction, which on SST-2 zero-shot turned 98%
    "positive" answers into 80% "negative" (``benchmarks/results/search_moves.md``); 0.5 corrects half way."""
    lm = lm if lm is not None else dspy.settings.lm
    engine = local_engine(lm)
    if engine is None or field not in predictor.signature.output_fields or len(choices) < 2:
        return None
    ids = engine.first_tokens(choices)
    if len(set(ids)) < len(ids):
        logger.info("no calibration: labels %s share a first token", choices)
        return None
    found = []
    for value in CONTENT_FREE:
        dist = label_distribution(predictor, {name: value for name in predictor.signature.input_fields},
                                  field=field, token_ids=ids, lm=lm)
        if dist is not None:
            found.append(dist)
    if not found:
        return None
    mean = [sum(d[i] for d in found) / len(found) for i in range(len(ids))]
    bias = [-math.log(max(p, 1e-12)) for p in mean]
    centre = sum(bias) / len(bias)
    return {str(token): round(max(-MAX_BIAS, min(MAX_BIAS, strength * (b - centre))), 4)
            for token, b in zip(ids, bias)}


def label_distribution(predictor: dspy.Predict, inputs: dict[str, Any], *, field: str, token_ids: list[int],
                       lm: Any = None) -> list[float] | None:
    """The embedded model's probabilities of ``token_ids`` (each label's first token) where ``predictor``'s
    greedy, grammar-constrained answer to ``inputs`` chooses ``field`` (its instruction and demos, retrieved
    ones included), from one metered LM call answered from DSPy's cache when the LM caches (a rerun of the
    same search costs no call); ``None`` when the answer never reaches the field. Needs the embedded engine."""
    from autoprompt._retrieval import demos_for
    from autoprompt.export._render import json_schema

    lm = lm if lm is not None else dspy.settings.lm
    engine = local_engine(lm)
    if engine is None:
        return None
    signature = predictor.signature
    messages = CompactJSONAdapter().format(signature, demos_for(predictor, inputs), inputs)
    schema = json_schema(signature)
    request = {"autoprompt": "label_distribution", "model": engine.model_id, "messages": messages,
               "schema": schema, "field": field, "token_ids": list(token_ids)}
    cached = getattr(lm, "cache", True)
    dist = dspy.cache.get(request) if cached else None
    if dist is None:
        dist = engine.label_distribution(messages, schema=schema, field=field, token_ids=list(token_ids))
        if dist is not None and cached:
            dspy.cache.put(request, dist)
    return dist


def calibrate_program(program: dspy.Module, task: Any, strengths: Mapping[str, float]) -> dict[str, dict]:
    """The calibrating ``logit_bias`` of each predictor of ``program`` named in ``strengths`` with a strength
    above 0, by predictor name (:func:`label_bias`: metered LM calls); a predictor whose label choice cannot
    be measured is left out and logged. The program is not changed (see :func:`with_logit_bias`). The p
    search calibrates a trial's program with it, ``compile_training_data(retry_calibration=)`` its retries."""
    choices = [str(c) for c in task.choices or ()]
    out = {}
    for name, predictor in program.named_predictors():
        if not strengths.get(name):
            continue
        bias = label_bias(predictor, field=task.label_field, choices=choices, strength=float(strengths[name]))
        if bias is None:
            logger.warning("predictor %s: calibration found no label choice to measure; left uncalibrated", name)
        else:
            out[name] = bias
    return out


def with_logit_bias(program: dspy.Module, biases: Mapping[str, Mapping[str, float]] | None) -> dspy.Module:
    """``program`` with each named predictor's ``logit_bias`` in its LM config (in place; returned)."""
    for name, predictor in program.named_predictors():
        if (biases or {}).get(name):
            predictor.config = {**predictor.config, "logit_bias": dict(biases[name])}
    return program
