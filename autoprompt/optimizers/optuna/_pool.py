"""The candidate pool of the search: instructions and demo sets per predictor, built once per study.

Per predictor: the original instruction, ``n_templates`` rewordings of it written from the signature
without an LM (:func:`autoprompt._instructions.paraphrases`), and instructions the proposer LM writes
(a candidate it cannot produce is skipped and counted); and demo sets: labelled samples of the train split balanced over the
labels, and demos bootstrapped from the program's own passing traces; with ``calibrate``, whether a trial
may calibrate the predictor's label choice; with ``retrieval``, the labelled
train split itself, from which a trial may take per-input demos instead (the nearest examples by BM25,
:mod:`autoprompt._retrieval`), and ``demo_orders``, the orders of those demos a trial may take (``vote``:
only for a predictor that outputs the task's label), and then ``warm_start``: the number of demos the first
trial takes, the one of :data:`WARM_START_DEMOS` whose neighbours' label vote scores best on the dev rows
(no LM call; :func:`autoprompt._retrieval.neighbour_votes`). The pool is stored in the study
(``study.user_attrs["pool"]``, versioned) so that every worker and every reader uses the same one.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import dspy

from autoprompt._exceptions import BudgetExhausted
from autoprompt.evaluate import run_one
from autoprompt.optimizers._base import Context

__all__ = ["POOL_VERSION", "WARM_START_DEMOS", "build_pool", "load_pool", "stratified_sample"]

logger = logging.getLogger(__name__)

POOL_VERSION = 1
#: the demo counts the warm start chooses from (those up to ``max_demos``): the moves benchmark measured
#: 4 and 8 retrieved demos ordered by vote (``benchmarks/results/search_moves.md``)
WARM_START_DEMOS = (4, 8)

TIPS = (
    "Keep it short and direct.",
    "Name the possible answers explicitly.",
    "Describe what the input is and what to look for in it.",
    "Tell the model to answer with the label only.",
)


class ProposeInstruction(dspy.Signature):
    """You improve prompts. Read the current instruction of a task and some labelled examples, then
    write one new, clear instruction (one or two sentences) telling a model how to do the task."""

    current_instruction: str = dspy.InputField()
    examples: str = dspy.InputField(desc="labelled examples of the task")
    tip: str = dspy.InputField(desc="advice for the new instruction")
    proposed_instruction: str = dspy.OutputField()


def build_pool(program: dspy.Module, task: Any, context: Context, *, max_demos: int, n_demo_sets: int,
               n_instructions: int, n_templates: int = 0, retrieval: bool = False, calibrate: bool = False,
               demo_orders: tuple[str, ...] = ("similarity",), label_prior: bool = False) -> dict:
    """Instructions and demo sets per predictor; see the module docstring."""
    rng = random.Random(context.seed)
    pool: dict[str, Any] = {"version": POOL_VERSION, "predictors": {}, "skipped": {}}
    n_labeled = n_demo_sets - n_demo_sets // 2
    n_boot = n_demo_sets // 2
    boot_sets, boot_failed = _bootstrap(program, task, context, n_boot, rng, max_demos)
    instructions, inst_failed = _propose(program, task, context, rng, n_instructions)
    if n_templates:
        from autoprompt._instructions import paraphrases

        for name, predictor in program.named_predictors():
            choices = task.choices if task.label_field in predictor.signature.output_fields else None
            found = instructions[name]
            extra = [t for t in paraphrases(predictor.signature, choices)[1:] if t not in found][:n_templates]
            instructions[name] = found[:1] + extra + found[1:]  # original, templates, LM proposals
    for name, predictor in program.named_predictors():
        fields = set(predictor.signature.fields)
        labeled = []
        for _ in range(n_labeled if max_demos else 0):
            sample = stratified_sample(context.trainset, max_demos, task.label_field, rng)
            labeled.append([{k: v for k, v in ex.items() if k in fields} for ex in sample])
        pool["predictors"][name] = {
            "instructions": instructions[name],
            "demo_sets": labeled + [s for s in boot_sets.get(name, []) if s],
        }
        inputs = list(predictor.signature.input_fields)
        if retrieval and max_demos and context.trainset and all(k in context.trainset[0] for k in inputs):
            # the labelled train split, for per-input demos (autoprompt._retrieval); a predictor whose inputs
            # the examples do not hold (an inner step's intermediate fields) keeps fixed demos only
            pool["predictors"][name]["retrieval"] = [
                {k: v for k, v in ex.items() if k in fields} for ex in context.trainset
            ]
            orders = [o for o in demo_orders if o != "vote" or task.label_field in predictor.signature.output_fields]
            if orders != ["similarity"]:  # (pools before the option hold no key: similarity)
                pool["predictors"][name]["demo_orders"] = orders or ["similarity"]
            if "vote" in orders:
                pool["predictors"][name]["warm_start"] = _warm_start(pool["predictors"][name]["retrieval"], inputs,
                                                                     task, context.devset, max_demos)
        elif retrieval and max_demos:
            logger.info("predictor %s: no per-input demos (the train examples lack its inputs %s)", name, inputs)
        if calibrate:
            pool["predictors"][name]["calibrate"] = _calibratable(name, predictor, task)
        if label_prior:
            prior = _prior_offer(name, predictor, program, task, context)
            if prior is not None:
                pool["predictors"][name]["label_prior"] = prior
                if "retrieval" not in pool["predictors"][name]:  # the prior's neighbours come from the train split
                    pool["predictors"][name]["prior_pool"] = [
                        {k: v for k, v in ex.items() if k in fields} for ex in context.trainset]
    pool["skipped"] = {"instructions": inst_failed, "bootstrap_examples": boot_failed}
    logger.info(
        "candidate pool: %s; skipped %d instruction proposals and %d bootstrap examples",
        {n: (len(c["instructions"]), len(c["demo_sets"])) for n, c in pool["predictors"].items()},
        inst_failed,
        boot_failed,
    )
    return json.loads(json.dumps(pool, default=str))


def _label_choice_problem(predictor: Any, task: Any) -> str | None:
    """Why a ``logit_bias`` cannot steer this predictor's label choice, or ``None`` when it can."""
    from autoprompt._calibration import local_engine

    lm = dspy.settings.lm  # the task LM (a trial calibrates for the LM it is scored on)
    engine = local_engine(lm)
    if not task.choices or task.label_field not in predictor.signature.output_fields:
        return "it does not choose the task's declared labels"
    if engine is None:
        return f"its LM {getattr(lm, 'model', lm)!r} is not the embedded llama.cpp engine (logit_bias needs its token ids)"
    if len(set(engine.first_tokens([str(c) for c in task.choices]))) < len(task.choices):
        return "labels share a first token"
    return None


def _calibratable(name: str, predictor: Any, task: Any) -> bool:
    """Whether a trial may calibrate this predictor's label choice (see :mod:`autoprompt._calibration`)."""
    why = _label_choice_problem(predictor, task)
    if why:
        logger.info("calibration not searched for predictor %s: %s", name, why)
    return why is None


def _prior_offer(name: str, predictor: Any, program: dspy.Module, task: Any, context: Context) -> dict | None:
    """The labels and their first tokens when a trial may add the neighbours' label prior to this predictor
    (:mod:`autoprompt.optimizers.optuna._prior`), else ``None`` (logged)."""
    from autoprompt._calibration import local_engine

    why = _label_choice_problem(predictor, task)
    inputs = list(predictor.signature.input_fields)
    if why is None and len(list(program.named_predictors())) != 1:
        why = "the program has several predictors (a trial fits the prior on the label's probabilities)"
    elif why is None and list(predictor.signature.output_fields) != [task.label_field]:
        why = f"its outputs {list(predictor.signature.output_fields)} are not the label alone"
    elif why is None and not (context.trainset and all(k in context.trainset[0] for k in [*inputs, task.label_field])):
        why = "the train examples lack its inputs or the label"
    if why:
        logger.info("label prior not searched for predictor %s: %s", name, why)
        return None
    choices = [str(c) for c in task.choices]
    return {"choices": choices, "token_ids": local_engine().first_tokens(choices)}


def load_pool(study: Any) -> dict:
    """The candidate pool a study holds (what its trials' parameters index into)."""
    from autoprompt._exceptions import RunError

    pool = study.user_attrs.get("pool")
    if pool is None:
        raise RunError(f"study {study.study_name!r} holds no candidate pool: no trial of it ever started")
    if pool.get("version") != POOL_VERSION:
        raise RunError(f"study {study.study_name!r} holds a candidate pool of version {pool.get('version')!r}, "
                       f"not {POOL_VERSION}: written by another autoprompt version")
    return pool


def _warm_start(retrieval: list[dict], inputs: list[str], task: Any, devset: list, max_demos: int) -> dict:
    """The first trial's demos: ordered by vote, as many as make the neighbours' vote best on ``devset``
    (ties: fewer). A 135M model given retrieved demos scored about what their labels' vote scores (SST-2 dev:
    4 demos 70.0%, their vote 71.5%; ``benchmarks/results/retrieval_ceiling.md``), so the vote, which costs
    no LM call, picks the count."""
    from autoprompt._retrieval import neighbour_votes

    ks = tuple(k for k in WARM_START_DEMOS if k <= max_demos) or (max_demos,)
    rows = [ex for ex in devset if all(f in ex for f in inputs)]
    if len(ks) == 1 or not rows:
        return {"n_demos": ks[0], "demo_order": "vote"}
    votes = neighbour_votes(retrieval, inputs, task.label_field, rows, ks)
    right = {k: sum(v[k] == str(ex[task.label_field]) for ex, v in zip(rows, votes)) for k in ks}
    best = max(ks, key=lambda k: (right[k], -k))
    logger.info("warm start: %d demos ordered by vote (their vote on %d dev rows: %s)", best, len(rows),
                {k: round(r / len(rows), 3) for k, r in right.items()})
    return {"n_demos": best, "demo_order": "vote", "vote_dev": {str(k): round(r / len(rows), 4) for k, r in right.items()}}


def _bootstrap(program, task, context, n_sets, rng, max_demos) -> tuple[dict[str, list], int]:
    sets: dict[str, list] = {name: [] for name, _ in program.named_predictors()}
    failed = 0
    if n_sets == 0 or max_demos == 0:
        return sets, failed
    lm = context.proposer_lm or dspy.settings.lm
    candidates = list(context.trainset)
    rng.shuffle(candidates)
    attempts = iter(candidates)
    calls_left = n_sets * max_demos * 3  # at most this many bootstrap runs of the program
    # like the labelled sets, bootstrapped sets are balanced over the labels (when declared)
    quota = -(-max_demos // len(task.choices)) if task.choices else max_demos
    for _ in range(n_sets):
        current: dict[str, list] = {name: [] for name in sets}
        per_label: dict[str, int] = {}
        while min(len(v) for v in current.values()) < max_demos:
            example = next(attempts, None)
            if example is None or calls_left == 0:
                break
            label = str(example[task.label_field])
            if per_label.get(label, 0) >= quota:
                continue
            calls_left -= 1
            try:
                with dspy.context(lm=lm, trace=[]):
                    prediction, failure = run_one(program, example)
                    trace = list(dspy.settings.trace)
            except BudgetExhausted:
                break
            if failure is not None or task.score(example, prediction) < 1.0:
                failed += 1
                continue
            per_label[label] = per_label.get(label, 0) + 1
            for predictor, inputs, outputs in trace:
                name = _predictor_name(program, predictor)
                if name is not None and len(current[name]) < max_demos:
                    current[name].append({**inputs, **dict(outputs)})
        for name in sets:
            sets[name].append(current[name])
    return sets, failed


def _propose(program, task, context, rng, n_instructions) -> tuple[dict[str, list[str]], int]:
    out: dict[str, list[str]] = {}
    failed = 0
    lm = context.proposer_lm or dspy.settings.lm
    propose = dspy.Predict(ProposeInstruction)
    for name, predictor in program.named_predictors():
        original = predictor.signature.instructions
        found = [original]
        fields = list(predictor.signature.fields)
        for i in range(n_instructions):
            sample = rng.sample(context.trainset, min(3, len(context.trainset)))
            shown = "\n".join(
                "; ".join(f"{k}: {ex[k]}" for k in fields if k in ex) for ex in sample
            )
            try:
                with dspy.context(lm=lm):
                    result = propose(
                        current_instruction=original,
                        examples=shown,
                        tip=TIPS[i % len(TIPS)],
                        config={"temperature": 0.7, "rollout_id": context.seed * 1000 + i},
                    )
                text = str(result.proposed_instruction).strip()
            except BudgetExhausted:
                break
            except Exception as exc:  # a weak LM that cannot produce the format, or an LM error
                logger.warning("instruction proposal %d for %s failed (skipped): %s", i, name, exc)
                failed += 1
                continue
            if not 10 <= len(text) <= 600 or text in found:
                logger.info("instruction proposal %d for %s skipped: %r", i, name, text[:80])
                failed += 1
                continue
            found.append(text)
        out[name] = found
    return out, failed


def stratified_sample(examples: list, k: int, label_field: str, rng: random.Random) -> list:
    """``k`` examples that cycle through the labels in a random order (a 135M model copies the label of
    an unbalanced demo set; balanced demos were worth +8 points on SST-2 dev[:100]).

    Example:
        >>> rows = [{"y": "a"}] * 5 + [{"y": "b"}] * 5
        >>> [r["y"] for r in stratified_sample(rows, 4, "y", random.Random(0))].count("a")
        2
    """
    groups: dict[str, list] = {}
    for example in examples:
        groups.setdefault(str(example[label_field]), []).append(example)
    labels = list(groups)
    rng.shuffle(labels)
    for members in groups.values():
        rng.shuffle(members)
    out = []
    i = 0
    while len(out) < min(k, len(examples)):
        members = groups[labels[i % len(labels)]]
        taken = i // len(labels)
        if taken < len(members):
            out.append(members[taken])
        i += 1
    return out


def _predictor_name(program: dspy.Module, predictor: Any) -> str | None:
    for name, p in program.named_predictors():
        if p is predictor:
            return name
    return None
