"""What a variant costs and how steady it is, measured on a sample of test examples.

- inference cost: prompt and completion tokens per call and latency per example, with DSPy's
  response cache off (every call reaches the model);
- consistency: repeated answers at temperature > 0 agreeing with the greedy answer;
- wording sensitivity: the score over paraphrases of the instruction, written without an LM from the
  signature (:func:`paraphrases`), and over the prompt search's best trials;
- the reference without an LM: the labels of the nearest train examples, voted (:func:`neighbour_vote`).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Sequence

import dspy

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._instructions import paraphrases
from autoprompt.evaluate import run_one
from autoprompt.usage import Meter

__all__ = ["NEIGHBOUR_KS", "consistency", "inference_cost", "neighbour_vote", "paraphrases", "score_program",
           "score_with_instruction", "task_paraphrases"]

logger = logging.getLogger(__name__)

#: the neighbour counts the reference chooses from (on the dev split)
NEIGHBOUR_KS = (1, 4, 8, 16, 32)


def _with_instructions(program: dspy.Module, instructions: dict[str, str]) -> dspy.Module:
    copy = program.deepcopy()
    for name, predictor in copy.named_predictors():
        if name in instructions:
            predictor.signature = predictor.signature.with_instructions(instructions[name])
    return copy


def task_paraphrases(task: Any) -> list[dict[str, str]]:
    """Per wording, the instruction of each predictor of the task's own program: paraphrases of each
    predictor's original instruction (the declared choices spelled out where it outputs the label)."""
    per_predictor = {}
    for name, predictor in task.make_program().named_predictors():
        choices = task.choices if task.label_field in predictor.signature.output_fields else None
        per_predictor[name] = paraphrases(predictor.signature, choices)
    n = min(len(texts) for texts in per_predictor.values())
    return [{name: texts[i] for name, texts in per_predictor.items()} for i in range(n)]


def score_program(program: dspy.Module, task: Any, examples: Sequence[Any], lm: Any) -> tuple[float, list[str | None]]:
    """Mean score of ``program`` on ``examples`` and its answers (the label field; ``None`` where it failed)."""
    scores, answers = [], []
    with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
        for example in examples:
            prediction, failure = run_one(program, example)
            scores.append(0.0 if failure else task.score(example, prediction))
            answers.append(None if failure else str(getattr(prediction, task.label_field, None)))
    return sum(scores) / len(scores), answers


def score_with_instruction(program: dspy.Module, task: Any, examples: Sequence[Any], instructions: dict[str, str],
                           lm: Any) -> tuple[float, list[str | None]]:
    """:func:`score_program` with the predictors' instructions replaced (``{predictor: instruction}``; demos kept)."""
    return score_program(_with_instructions(program, instructions), task, examples, lm)


def inference_cost(program: dspy.Module, lm_spec: Any, examples: Sequence[Any]) -> dict[str, Any]:
    """Tokens per call and seconds per example of ``program`` on ``lm_spec``, every call reaching the
    model (DSPy's cache off); the first example is run once before timing (loading, warm-up)."""
    lm = lm_spec.build(cache=False)
    meter = Meter()
    latencies: list[float] = []
    with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
        run_one(program, examples[0])  # warm-up: model load, prompt cache of the shared system message
        with dspy.context(usage_tracker=meter):
            for example in examples:
                t0 = time.perf_counter()
                run_one(program, example)
                latencies.append(time.perf_counter() - t0)
    calls = max(meter.calls, 1)
    return {
        "examples": len(examples),
        "calls": meter.calls,
        "calls_per_example": round(meter.calls / len(examples), 3),
        "prompt_tokens_per_call": round(meter.prompt_tokens / calls, 1),
        "completion_tokens_per_call": round(meter.completion_tokens / calls, 1),
        "seconds_per_example": round(statistics.mean(latencies), 4),
        "median_seconds_per_example": round(statistics.median(latencies), 4),
    }


def consistency(program: dspy.Module, task: Any, lm_spec: Any, examples: Sequence[Any], *, repeats: int = 3,
                temperature: float = 0.7) -> dict[str, Any]:
    """Share of answers sampled at ``temperature`` (``repeats`` per example, each its own rollout) equal to
    the greedy answer, and share of examples where all of them agree."""
    lm = lm_spec.build()
    field = task.label_field
    agree, unanimous = 0, 0
    samplers = [_sampling(program, temperature, r + 1) for r in range(repeats)]
    with dspy.context(lm=lm, adapter=CompactJSONAdapter()):
        for example in examples:
            greedy, _ = run_one(program, example)
            first = None if greedy is None else str(getattr(greedy, field, None))
            same = 0
            for sampler in samplers:
                sampled, _ = run_one(sampler, example)
                same += int(sampled is not None and str(getattr(sampled, field, None)) == first)
            agree += same
            unanimous += int(same == repeats)
    return {"examples": len(examples), "repeats": repeats, "temperature": temperature,
            "agreement": round(agree / (repeats * len(examples)), 4),
            "unanimous": round(unanimous / len(examples), 4)}


def _sampling(program: dspy.Module, temperature: float, rollout: int) -> dspy.Module:
    copy = program.deepcopy()
    for _, predictor in copy.named_predictors():
        predictor.config = {**(predictor.config or {}), "temperature": temperature, "rollout_id": rollout}
    return copy


def neighbour_vote(task: Any, train: Sequence[Any], dev: Sequence[Any], test: Sequence[Any],
                   ks: Sequence[int] = NEIGHBOUR_KS) -> dict[str, Any] | None:
    """The reference a classifier needs no LM for: the label most frequent among the ``k`` train examples
    nearest to the input (BM25 over the input fields, the prompt search's per-input demo retrieval), ``k``
    chosen on ``dev`` (ties: the smaller), scored on ``test`` with the task's metric.

    ``None`` when the task declares no label choices or the train examples lack the input fields.
    Returns ``k``, ``dev`` (the score per ``k``), ``scores`` (per test example) and ``inputs``.
    """
    from autoprompt._retrieval import choose_k, neighbour_votes

    fields, label = list(task.input_fields), task.label_field
    if not task.choices or not train or not dev or not test or any(f not in train[0] for f in (*fields, label)):
        return None
    pool = [dict(ex) for ex in train]

    def score(examples: Sequence[Any], ks_: tuple[int, ...]) -> dict[int, list[float]]:
        votes = neighbour_votes(pool, fields, label, list(examples), ks_)  # one index, every k at once
        return {k: [float(task.metric(ex, dspy.Prediction(**{label: v[k]}))) for ex, v in zip(examples, votes)]
                for k in ks_}

    dev_means = {k: sum(v) / len(v) for k, v in score(dev, tuple(ks)).items()}
    best = choose_k(dev_means)
    return {"method": "bm25-vote", "k": best, "dev": {str(k): round(m, 4) for k, m in dev_means.items()},
            "dev_n": len(dev), "scores": score(test, (best,))[best],
            "inputs": [{f: ex[f] for f in fields} for ex in test]}
