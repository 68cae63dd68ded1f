"""Compiling a program into fine-tuning data (BetterTogether's "w" step, first half).

The program runs over a split with DSPy tracing on; every example whose metric reaches
``threshold`` yields one training example per LM call of its trace, formatted with the same
adapter (:class:`autoprompt.CompactJSONAdapter`) the program is optimized and served with. Answers
that do not parse are dropped and counted, never raised.

Traces can be balanced over the labels (``balance=True``, the default for a BetterTogether ``w``
step): a program that answers one label for nearly every input passes the metric nearly only on that
label, and a LoRA trained on such traces learns to answer that label. With ``max_traces`` the
examples are visited in a seeded random order, each declared choice gets a quota of
``max_traces / len(choices)`` kept examples, an example whose label's quota is full is skipped
without an LM call, and the pass stops when every quota is full. The manifest records the label
histogram of what was kept, dropped by the metric, dropped to balance, and never run.

Formats: ``openai`` (chat fine-tuning JSONL: ``{"messages": [...]}``), ``trl`` (TRL's
conversational prompt/completion JSONL: ``{"prompt": [...], "completion": [...]}``) and ``hf``
(a ``datasets.Dataset`` saved with ``save_to_disk`` plus a parquet file per split). Each export
folder has ``manifest.json`` (format version, task, source program, LM, filter, counts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dspy

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._exceptions import ExportError
from autoprompt._parallel import lm_concurrency, ordered_map
from autoprompt._retrieval import demos_for
from autoprompt._version import __version__
from autoprompt.evaluate import run_one
from autoprompt.store import atomic_write, dump_json
from autoprompt.export._render import json_schema

__all__ = [
    "DATA_FORMATS", "TRAINING_FORMAT_VERSION", "TrainingData", "compile_training_data", "split_validation",
]

logger = logging.getLogger(__name__)

TRAINING_FORMAT_VERSION = 1
DATA_FORMATS = ("openai", "hf", "trl")
#: with the progress bar off, how often (seconds) a pass over the split logs how far it got
PROGRESS_LOG_SECONDS = 60.0


class _Ticker:
    """Logs an INFO line at most every :data:`PROGRESS_LOG_SECONDS` while a pass runs without its bar:
    tracing Banking77's train split takes ~16 min, and without a bar nothing said it was alive."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = time.monotonic()

    def __call__(self, message: str, *args: Any) -> None:
        if self.enabled and time.monotonic() - self.last >= PROGRESS_LOG_SECONDS:
            self.last = time.monotonic()
            logger.info(message, *args)


@dataclass
class TrainingData:
    """Training examples compiled from a program's traces.

    Attributes:
        train, val: records ``{"predictor": name, "messages": [...]}`` (the last message is the
            assistant's answer).
        counts: examples run, kept, dropped by the metric, dropped as parse failures or LM
            errors, dropped to balance the labels, skipped (quota full), duplicates removed.
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
                atomic_write(out / f"{split}.jsonl", "".join(
                    json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows))
                files.append(f"{split}.jsonl")
        manifest = {**self.manifest, "data_format": format, "files": files,
                    "rows": {s: len(r) for s, r in splits.items()}}
        atomic_write(out / "manifest.json", dump_json(manifest))
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
    max_traces: int | None = None,
    balance: bool = False,
    max_rounds: int = 1,
    extra_rounds: int = 0,
    max_attempts: int | None = None,
    retry_calibration: float = 0.0,
    min_label_share: float = 0.1,
    max_label_share: float = 0.1,
    progress: bool = True,
) -> TrainingData:
    """Run ``program`` over a split (with the current DSPy LM) and keep the passing traces.

    Args:
        threshold: keep an example when ``task.score(example, prediction) >= threshold``.
        keep_demos: keep the program's demos in the training prompts (BetterTogether trains on the
            plain prompts: the default drops them).
        dedupe: drop records whose messages are identical.
        val_fraction: share of the kept records held out as a validation split (seeded).
        limit: use a seeded sample of N examples of the split, stratified over the labels.
        max_traces: stop once this many examples are kept (with ``balance``: a quota of
            ``max_traces / len(task.choices)`` per label; examples of a full label are not run).
        balance: keep as many examples of every declared choice as of the rarest one that has any
            (needs ``task.choices``; with more than ten labels see ``max_label_share``). A label with no
            passing example is reported in the manifest (``labels.missing``) and logged; fewer than two
            labels with one raises ``ExportError``.
        min_label_share: with ``balance``, a label with fewer passing examples than this share of the
            most frequent label's does not set the cap: it keeps the few it has (``labels.rare``) and the
            others are balanced among themselves, as long as two or more remain to do so (else the
            rarest sets the cap as usual). Measured on Iris seed 2: traces of 20 setosa, 16 versicolor
            and 1 virginica balanced to 1 + 1 + 1 gave a LoRA of 32% test; 16 + 16 (+ the 1) keeps data to
            learn from.
        max_label_share: with ``balance``, the labels with most examples are cut only as far as needed for
            none to hold more than this share of the kept data (and never below the rarest label's count).
            With ten labels or fewer that is the rarest label's count, exact balance (a binary task's
            500 + 20 traces keep 20 + 20); with many labels no label dominates the data however uneven their
            counts, and cutting every label to the rarest one's would throw most of it away: on Banking77
            (77 intents, a quota of 13 per intent) the zero-shot program's 242 traces, 1 to 10 per intent,
            had been cut to 61, one per intent. ``0``: always exact balance.
        max_rounds: attempts per example (``answers="program"``): an example whose first answer
            (greedy, as served) fails the metric is run again up to ``max_rounds - 1`` times with a
            fresh rollout at temperature 1.0 and ``top_p=1.0`` (the whole distribution: llama.cpp's default
            top-k 40 / min-p 0.05 cuts would drop a label the model gives 3%), seeded per example and round (a hash of the seed, the
            example's inputs and the round: reproducible, and each rollout cached), and the first passing
            answer is kept, as DSPy's ``BootstrapFewShot(max_rounds=)``
            does. A program biased towards one label passes the metric on few examples of the others;
            sampling finds the examples where it gives the right label some probability. The manifest
            counts the examples kept per round (``counts.kept_by_round``) and the attempts made.
        extra_rounds: with ``balance``, once the split has been run: up to this many more sampled rounds
            (numbered after ``max_rounds``) for the examples that failed, of the labels with fewer passing
            examples than the quota (or than the label with most), until they have as many. A zero-shot
            program that names one label for nearly every input (the 135M model on Iris: "setosa") gives the
            others a few percent; on a small split a few more draws for those examples alone are what makes
            a balanced set possible (``counts.extra_attempts``).
        max_attempts: stop running the program once this many attempts (program runs, sampled rounds
            and runs ahead included) have been made, and build the data from what was kept so far
            (balanced as usual); ``counts.unvisited`` says how many examples of the split the cap left
            unvisited. A program right on few examples of most labels (the zero-shot 135M model on Banking77's
            77 intents) would otherwise run every example of those labels ``max_rounds`` times and more:
            hours. ``None``: no cap. The calls already in flight finish (at most ``2 x`` the LM's concurrency).
        retry_calibration: with a strength ``> 0``, the rounds after the first (sampled and extra rounds)
            run the program with its label choice calibrated (:func:`autoprompt._calibration.label_bias` at
            this strength, measured once per predictor on content-free inputs; predictors that already carry
            a ``logit_bias`` keep theirs), and the second round answers greedily instead of sampling. A
            program that names one label for nearly every input fails round 1 on most examples of the
            others; the calibrated greedy answer is their likeliest label relative to the model's prior,
            where a sampled answer finds it a few times in a hundred. The bias is a tracing device only:
            the records are the program's prompts and the passing answers, as for any round, and the
            manifest keeps the bias (``retry_bias``). Needs the embedded llama.cpp engine and labels with
            distinct first tokens; otherwise it is logged and the rounds sample as without it. Off by
            default: on SST-2 (1000 traces, seed 2) it cut tracing from 4324 program runs to 1628 and the
            LoRA's test accuracy from 89.4% to 84.4% (``benchmarks/results/better_together.md``, side
            ``calibrated``).
        source: where the program came from (a prompt file, a run), for the manifest.
        answers: ``"program"`` (BetterTogether: the program's own answers, kept when the metric
            passes) or ``"gold"`` (the split's labels as the answers to the program's prompts, no
            LM call: plain supervised fine-tuning; single-predictor programs only).
    """
    from tqdm.auto import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise ExportError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not 0.0 <= min_label_share <= 1.0:
        raise ExportError(f"min_label_share must be in [0, 1], got {min_label_share!r}")
    if not 0.0 <= max_label_share <= 1.0:
        raise ExportError(f"max_label_share must be in [0, 1], got {max_label_share!r}")
    if answers not in ("program", "gold"):
        raise ExportError(f"answers must be 'program' or 'gold', got {answers!r}")
    predictors = program.named_predictors()
    if answers == "gold" and len(predictors) != 1:
        raise ExportError(f"answers='gold' needs a single-predictor program; this one has {len(predictors)} "
                          "predictors (their intermediate answers have no labels): use answers='program'")
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1:
        raise ExportError(f"max_rounds must be a positive integer, got {max_rounds!r}")
    if not isinstance(extra_rounds, int) or isinstance(extra_rounds, bool) or extra_rounds < 0:
        raise ExportError(f"extra_rounds must be a non-negative integer, got {extra_rounds!r}")
    if max_attempts is not None and (not isinstance(max_attempts, int) or isinstance(max_attempts, bool)
                                     or max_attempts < 1):
        raise ExportError(f"max_attempts must be a positive integer or None, got {max_attempts!r}")
    if max_traces is not None and (not isinstance(max_traces, int) or max_traces < 1):
        raise ExportError(f"max_traces must be a positive integer or None, got {max_traces!r}")
    choices = [str(c) for c in task.choices] if balance and task.choices else None
    if balance and choices is None:
        logger.warning("balance=True needs declared choices (a Literal label); task %r has none: not balancing",
                       task.name)
    if isinstance(retry_calibration, bool) or not isinstance(retry_calibration, (int, float)) \
            or not 0.0 <= retry_calibration <= 1.0:
        raise ExportError(f"retry_calibration must be a strength in [0, 1], got {retry_calibration!r}")
    adapter = CompactJSONAdapter()
    names = {id(p): n for n, p in program.named_predictors()}
    retry_program, retry_bias = None, {}
    if retry_calibration and answers == "program" and (max_rounds > 1 or extra_rounds):
        retry_program, retry_bias = _calibrated(program, task, float(retry_calibration))
        if retry_program is not None:
            names.update({id(p): n for n, p in retry_program.named_predictors()})
    counts = {"examples": 0, "kept_examples": 0, "dropped_metric": 0, "dropped_parse": 0, "dropped_error": 0,
              "dropped_balance": 0, "skipped_quota": 0, "records": 0, "duplicates": 0, "attempts": 0,
              "speculative_attempts": 0, "unvisited": 0}
    kept_by_round: dict[str, int] = {}
    labels: dict[str, dict[str, int]] = {k: {} for k in ("kept", "dropped_metric", "dropped_failure",
                                                          "dropped_balance", "skipped_quota")}
    quota = -(-max_traces // len(choices)) if choices and max_traces else None
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    examples = task.examples(split, limit=limit)
    if max_traces is not None:  # a seeded visiting order: the first N kept are a random sample
        examples = list(examples)
        random.Random(seed).shuffle(examples)
    def gold_of(example: Any) -> str | None:
        return str(example[task.label_field]) if task.label_field in example else None

    def run_rounds(example: Any, first: int = 1, last: int = max_rounds, target: int | None = quota
                   ) -> tuple[list, str | None, bool, int] | None:
        """Rounds ``first..last`` of one example until one passes: ``(trace, failure, passed, round)``;
        ``None`` when its label already has ``target`` examples (checked again, in order, where the result
        is used)."""
        if target is not None and labels["kept"].get(gold_of(example), 0) >= target:
            return None
        trace, failure, passed, round_ = [], None, False, first - 1
        for round_ in range(first, last + 1):
            trace, failure, passed = _attempt(program if round_ == 1 or retry_program is None else retry_program,
                                              example, task, adapter, threshold, round_, seed,
                                              sample=round_ > (1 if retry_program is None else 2))
            if passed:
                break
        return trace, failure, passed, round_

    def keep(trace: list, round_: int, gold: str | None) -> None:
        kept_by_round[str(round_)] = kept_by_round.get(str(round_), 0) + 1
        counts["kept_examples"] += 1
        _tally(labels["kept"], gold)
        for predictor, inputs, outputs in trace:
            _add(records, seen, counts, adapter, predictor, names, dict(inputs), dict(outputs), keep_demos, dedupe,
                 gold)

    failed: list[tuple[Any, str]] = []  # (example, "dropped_metric" / "dropped_parse"): extra rounds may retry them

    def spent() -> int:  # program runs so far, the ones run ahead and not used included
        return counts["attempts"] + counts["speculative_attempts"]

    def capped() -> bool:
        return max_attempts is not None and spent() >= max_attempts

    # examples run as many at a time as the LM answers at once and are used in order, so the data is what one
    # at a time gives; an example run ahead whose label's quota filled meanwhile counts as speculative
    run_ahead = ordered_map(run_rounds, examples, lm_concurrency()) if answers != "gold" else None
    bar = tqdm(examples, desc=f"compile {split}", disable=not progress, unit="ex", leave=False)
    tick = _Ticker(enabled=not progress)
    wanted = quota * len(choices) if quota else max_traces
    total = len(examples) if hasattr(examples, "__len__") else "?"
    try:
        for visited, example in enumerate(bar):
            tick("training data: %d of %s %s examples visited, %d kept%s, %d attempts", visited, total, split,
                 counts["kept_examples"], f" of {wanted} wanted" if wanted else "", counts["attempts"])
            if max_traces is not None and counts["kept_examples"] >= wanted:
                break
            if capped():
                counts["unvisited"] = total - visited if isinstance(total, int) else 0
                logger.warning("training data: stopped after %d attempts (max_attempts %d) with %d of %s %s examples "
                               "visited and %d kept", spent(), max_attempts, visited, total, split,
                               counts["kept_examples"])
                break
            result = next(run_ahead) if run_ahead is not None else None  # one result per example, in order
            gold = gold_of(example)
            kept_here = labels["kept"].get(gold, 0)
            if quota is not None and kept_here >= quota:
                counts["skipped_quota"] += 1
                _tally(labels["skipped_quota"], gold)
                if result is not None:
                    counts["speculative_attempts"] += result[3]
                continue
            counts["examples"] += 1
            if answers == "gold":  # the labels answer the program's prompt; nothing to run or filter
                predictor = predictors[0][1]
                outputs = {k: example[k] for k in predictor.signature.output_fields if k in example}
                if len(outputs) != len(predictor.signature.output_fields):
                    raise ExportError(f"answers='gold': a {split} example lacks output fields "
                                      f"{sorted(set(predictor.signature.output_fields) - set(outputs))}")
                counts["kept_examples"] += 1
                _tally(labels["kept"], gold)
                _add(records, seen, counts, adapter, predictor, names, dict(example.inputs()), outputs, keep_demos, dedupe,
                     gold)
                continue
            assert result is not None  # its quota was open when it ran (quotas only fill)
            trace, failure, passed, round_ = result
            counts["attempts"] += round_
            if not passed:
                if failure is not None:
                    counts["dropped_parse" if failure == "parse" else "dropped_error"] += 1
                    _tally(labels["dropped_failure"], gold)
                    if failure == "parse":
                        failed.append((example, "dropped_parse"))
                else:
                    counts["dropped_metric"] += 1
                    _tally(labels["dropped_metric"], gold)
                    failed.append((example, "dropped_metric"))
                continue
            keep(trace, round_, gold)
            bar.set_postfix(kept=counts["kept_examples"])
    finally:
        bar.close()
        if run_ahead is not None:
            run_ahead.close()  # the calls still running finish; no new one starts
    if extra_rounds and choices is not None and answers != "gold" and failed and not capped():
        _extra_rounds(failed, choices, quota, labels, counts, run_rounds, keep, gold_of, max_rounds, extra_rounds,
                      tick, capped)
    missing: list[str] = []
    rare: list[str] = []
    if choices is not None:
        records, missing, rare = _balance(records, choices, labels, counts, task, split, min_label_share,
                                          max_label_share)
    counts["records"] = len(records)
    if max_rounds > 1 or extra_rounds:
        counts["kept_by_round"] = dict(sorted(kept_by_round.items(), key=lambda kv: int(kv[0])))
    train, val = split_validation(records, val_fraction, seed)
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
                    "seed": seed, "answers": answers, "max_traces": max_traces, "balance": balance,
                    "max_rounds": max_rounds, "extra_rounds": extra_rounds, "max_attempts": max_attempts,
                    "min_label_share": min_label_share, "max_label_share": max_label_share,
                    "retry_calibration": retry_calibration},
        "counts": counts,
        "retry_bias": retry_bias,
        "labels": {**{k: dict(sorted(v.items())) for k, v in labels.items()}, "missing": missing, "rare": rare},
    }
    logger.info("training data: %s", counts)
    return TrainingData(train=train, val=val, counts=counts, manifest=manifest)


def _extra_rounds(failed: list[tuple[Any, str]], choices: list[str], quota: int | None,
                  labels: dict[str, dict[str, int]], counts: dict[str, Any], run_rounds: Any, keep: Any,
                  gold_of: Any, max_rounds: int, extra_rounds: int, tick: _Ticker, capped: Callable[[], bool]) -> None:
    """More sampled rounds for the failed examples of the labels short of the others (see
    ``compile_training_data(extra_rounds=)``), used in order until each such label reaches the target."""
    kept = labels["kept"]
    target = quota if quota is not None else max((kept.get(c, 0) for c in choices), default=0)
    short = {c for c in choices if kept.get(c, 0) < target}
    retry = [(ex, why) for ex, why in failed if gold_of(ex) in short]
    if not retry:
        return
    logger.info("training data: up to %d more rounds for %d failed examples of %d label(s) short of %d passing "
                "examples", extra_rounds, len(retry), len(short), target)
    counts["extra_attempts"] = 0
    results = ordered_map(lambda item: run_rounds(item[0], max_rounds + 1, max_rounds + extra_rounds, target),
                          retry, lm_concurrency())
    try:
        for done, ((example, why), result) in enumerate(zip(retry, results)):
            tick("training data: extra rounds, %d of %d failed examples retried, %d kept", done, len(retry),
                 counts["kept_examples"])
            if capped():
                logger.warning("training data: extra rounds stopped at max_attempts after %d of %d failed examples",
                               done, len(retry))
                break
            if result is None:
                continue
            trace, _, passed, round_ = result
            if kept.get(gold_of(example), 0) >= target:  # run ahead while the label filled
                counts["speculative_attempts"] += round_ - max_rounds
                continue
            counts["extra_attempts"] += round_ - max_rounds
            counts["attempts"] += round_ - max_rounds
            if passed:
                gold = gold_of(example)
                counts[why] -= 1
                bucket = labels["dropped_metric" if why == "dropped_metric" else "dropped_failure"]
                bucket[gold] -= 1
                if not bucket[gold]:
                    del bucket[gold]
                keep(trace, round_, gold)
    finally:
        results.close()


def rollout_seed(seed: int, example: Any, round_: int) -> int:
    """The sampling seed of one example's round: independent across examples and rounds, reproducible.

    One seed per round for every example would draw the same random number for all of them, so a round
    would only pass the examples whose right answer is likelier than that one draw (measured: rounds 3
    and 4 then rescued 2 of 1253 failing examples instead of their share)."""
    key = json.dumps([seed, round_, dict(example.inputs())], sort_keys=True, default=str)
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def _calibrated(program: dspy.Module, task: Any, strength: float) -> tuple[dspy.Module | None, dict[str, dict]]:
    """A copy of ``program`` whose label-choosing predictors carry a calibrating ``logit_bias`` (see
    ``compile_training_data(retry_calibration=)``), and the biases by predictor; ``(None, {})`` when no
    predictor could be calibrated (logged)."""
    from autoprompt._calibration import calibrate_program, with_logit_bias

    # a predictor calibrated already (a p step's choice) keeps its bias: the retries run it as it is
    biases = calibrate_program(program, task, {name: 0.0 if "logit_bias" in (predictor.config or {}) else strength
                                               for name, predictor in program.named_predictors()})
    if not biases:
        logger.info("training data: retry_calibration has no label choice to calibrate (needs the embedded engine, "
                    "declared choices with distinct first tokens); the retry rounds sample as without it")
        return None, {}
    logger.info("training data: retry rounds calibrated with logit_bias %s", biases)
    return with_logit_bias(program.deepcopy(), biases), biases


def _attempt(program: dspy.Module, example: Any, task: Any, adapter: Any, threshold: float, round_: int,
             seed: int, sample: bool) -> tuple[list, str | None, bool]:
    """One run of ``program`` with tracing: ``(trace, failure, passed)``; ``sample`` draws a fresh rollout at
    temperature 1.0, seeded by the example and round (the rounds after the first, or after the second when it
    is the calibrated greedy one)."""
    settings: dict[str, Any] = {"trace": [], "adapter": adapter}
    if sample:
        # DSPy's bootstrap rounds: a fresh rollout at temperature 1.0 (seeded, so reproducible),
        # from the whole distribution (top_p=1.0; the local engine then turns llama.cpp's top-k/min-p cuts off)
        if dspy.settings.lm is None:
            raise ExportError("max_rounds > 1 samples from the current DSPy LM; none is configured")
        settings["lm"] = dspy.settings.lm.copy(rollout_id=round_ - 1, temperature=1.0, top_p=1.0,
                                               seed=rollout_seed(seed, example, round_))
    with dspy.context(**settings):
        prediction, failure = run_one(program, example)
        trace = list(dspy.settings.trace)
    passed = failure is None and task.score(example, prediction) >= threshold
    return trace, failure, passed


def _tally(histogram: dict[str, int], label: str | None) -> None:
    histogram[str(label)] = histogram.get(str(label), 0) + 1


def _balance(records: list[dict[str, Any]], choices: list[str], labels: dict[str, dict[str, int]],
             counts: dict[str, int], task: Any, split: str, min_label_share: float = 0.0,
             max_label_share: float = 0.0) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Cut the labels with most examples to a common cap; report the labels with none, and the rare ones
    (fewer than ``min_label_share`` of the largest label's count) that keep what they have while the others
    balance among themselves. The cap is the largest count at which no label holds more than
    ``max_label_share`` of the kept data, and at least the rarest (non-rare) label's count: exact balance
    unless there are more than ``1 / max_label_share`` labels. Returns ``(records, missing, rare)``.

    Example:
        kept {"positive": 300, "negative": 40} -> 40 + 40 kept, 260 "positive" dropped_balance.
        kept {"setosa": 20, "versicolor": 16, "virginica": 1}, min share 0.1 -> 16 + 16 + 1.
        kept 77 intents with 1 to 10 each (242), max share 0.1 -> all 242 kept (10 of 242 is 4%).
    """
    kept = labels["kept"]
    missing = [c for c in choices if not kept.get(c)]
    present = [c for c in choices if kept.get(c)]
    if len(present) < 2:
        raise ExportError(
            f"cannot balance the training data of task {task.name!r} over its labels: the program passed the "
            f"metric on {dict(kept) or 'no example'} of split {split!r} ({counts['examples']} run, "
            f"{counts['attempts']} attempts{_extra_text(counts)}). Use a larger "
            "split, a better program (a p step first), answers='gold', or balance=False"
        )
    if missing:
        logger.warning("training data: no passing trace for label(s) %s of %d; the fine-tuned LM will not learn them "
                       "(kept per label: %s)", missing[:10], len(choices), dict(kept))
    largest = max(kept[c] for c in present)
    rare = [c for c in present if kept[c] < min_label_share * largest]
    if len(present) - len(rare) < 2:
        rare = []
    if rare:
        logger.warning("training data: label(s) %s have fewer than %.0f%% of the largest label's %d passing examples: "
                       "they keep what they have and the other labels are balanced among themselves (kept per "
                       "label: %s)", rare[:10], 100 * min_label_share, largest, dict(kept))
    quota = _cap([kept[c] for c in present if c not in rare], sum(kept[c] for c in rare), max_label_share)
    out, taken = [], {}
    examples_seen: dict[str, set[int]] = {}
    for record in records:  # records of one example share its label; cap examples, not LM calls
        label = record["label"]
        ids = examples_seen.setdefault(label, set())
        if record["example"] not in ids:
            ids.add(record["example"])
            taken[label] = taken.get(label, 0) + 1
        if taken[label] <= quota:
            out.append(record)
    for label in present:
        over = kept[label] - quota
        if over > 0:
            labels["dropped_balance"][label] = over
            kept[label] = quota
            counts["dropped_balance"] += over
            counts["kept_examples"] -= over
    return out, missing, rare


def _cap(sizes: list[int], fixed: int, max_share: float) -> int:
    """The largest cap ``c`` (from the largest size down to the smallest) at which ``c`` is at most
    ``max_share`` of the data kept, ``sum(min(n, c) for n in sizes) + fixed``; the smallest size if none is.
    Scanned, not solved: the kept total grows with ``c`` at a slope of the labels above it."""
    for cap in range(max(sizes), min(sizes), -1):
        if cap <= max_share * (sum(min(n, cap) for n in sizes) + fixed):
            return cap
    return min(sizes)


def _extra_text(counts: dict[str, Any]) -> str:
    extra = counts.get("extra_attempts")
    text = f", {extra} of them extra rounds for the labels short of traces" if extra else ""
    if counts.get("unvisited"):
        text += f"; stopped at max_attempts with {counts['unvisited']} examples unvisited: raise max_attempts"
    return text


def split_validation(records: list[dict[str, Any]], val_fraction: float, seed: int
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, val)``: a seeded validation share of ``records``, stratified over their ``label`` and made of
    whole examples (records sharing an ``example`` index stay together).

    The share is ``round(val_fraction * examples)`` examples in all, allocated by largest remainder: each
    label gives ``floor(val_fraction * its examples)``, the rest go one each to the labels with the largest
    remainders (ties in a seeded order), never a label's last training example. Rounding per label instead
    would hold nothing back from a many-label task with a few examples per label (82 traces over 44
    Banking77 intents: 0.1 x 1..4 rounds to 0 for every one of them).

    Example:
        >>> records = [{"example": i, "label": label} for i, label in enumerate("aabbbcccccd")]
        >>> train, val = split_validation(records, 0.2, seed=0)
        >>> len(val), sorted(r["label"] for r in val)  # 0.2 x 11 rounds to 2; "d" keeps its only example
        (2, ['b', 'c'])
    """
    by_label: dict[str, dict[int, None]] = {}  # example indices per label, in order, once each
    for r in records:
        by_label.setdefault(str(r.get("label")), {})[r["example"]] = None
    rng = random.Random(seed)
    labels = sorted(by_label)
    shares = {label: val_fraction * len(by_label[label]) for label in labels}
    counts = {label: math.floor(shares[label]) for label in labels}
    left = int(round(val_fraction * sum(len(ids) for ids in by_label.values()))) - sum(counts.values())
    order = labels[:]
    random.Random(seed + 1).shuffle(order)  # the tie order among equal remainders
    for label in sorted(order, key=lambda lb: shares[lb] - counts[lb], reverse=True):
        if left <= 0:
            break
        if counts[label] + 1 < len(by_label[label]):
            counts[label] += 1
            left -= 1
    val_ids: set[int] = set()
    for label in labels:
        ids = list(by_label[label])
        rng.shuffle(ids)
        val_ids.update(ids[:counts[label]])
    return [r for r in records if r["example"] not in val_ids], [r for r in records if r["example"] in val_ids]


def _add(records: list, seen: set, counts: dict, adapter: Any, predictor: Any, names: dict, inputs: dict,
         outputs: dict, keep_demos: bool, dedupe: bool, label: str | None = None) -> None:
    """One training record: the messages the adapter sends for ``inputs`` and the answer ``outputs``."""
    demos = [d.toDict() if hasattr(d, "toDict") else dict(d) for d in demos_for(predictor, inputs)] if keep_demos else []
    # ChatAdapter's record (the adapter's messages + its assistant message) for any adapter: DSPy's JSONAdapter
    # (older prompt documents) does not implement format_finetune_data; CompactJSONAdapter's is this one
    messages = dspy.ChatAdapter.format_finetune_data(adapter, predictor.signature, demos, inputs, outputs)["messages"]
    key = hashlib.sha256(json.dumps(messages, sort_keys=True, default=str).encode()).hexdigest()
    if dedupe and key in seen:
        counts["duplicates"] += 1
        return
    seen.add(key)
    records.append({"predictor": names.get(id(predictor), "?"), "messages": messages, "label": label,
                    "example": counts["kept_examples"], "schema": _schema(predictor.signature)})


def _schema(signature: Any) -> dict[str, Any] | None:
    """The answer's JSON schema, so that a finetuner can decode held-out records as they are served."""
    try:
        return json_schema(signature)
    except Exception:  # open-ended outputs (dict[str, Any]) have none: plain JSON mode then
        return None
