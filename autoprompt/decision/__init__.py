"""Prompt, fine-tune, or both? Measured on the user's task, data and LM: :func:`decide`.

``decide`` runs (or, resumed, reuses) the variants of a BetterTogether run: vanilla (zero-shot),
prompt-optimized ``p``, fine-tuned ``w``, ``p -> w`` and the combination ``p -> w -> p``, within a
budget of LM calls per prompt search and of fine-tuning minutes. For each variant it reports:

- accuracy on the test split with a bootstrap interval, and a paired test against the next best
  variant on the same examples (exact McNemar for 0/1 metrics);
- inference cost: prompt and completion tokens per call, seconds per example on this machine (DSPy's
  cache off), and the price of 1,000 calls at the prices given;
- one-off cost: LM calls and tokens of the prompt search, tracing calls, fine-tuning time and tokens;
- consistency: answers sampled at temperature 0.7 that agree with the greedy answer;
- wording sensitivity: the score spread over paraphrases of the instruction (written from the
  signature, no LM) and over the prompt search's best trials;

then recommends one with its reasons, beside a reference that needs no LM (a classifier task: the vote of
the nearest train examples' labels, the same retrieval as the search's per-input demos). The run folder::

    config.json  decision.json  decision.md  run.log
    measure/<variant>.json     what was measured per variant (skipped when present: resumable)
    measure/reference.json     the no-LM reference's per-example test scores
    variants/                  the BetterTogether run (its steps, programs, LMs, scores)
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from autoprompt._exceptions import ExportError, FinetuneError, OptionError, TaskError
from autoprompt._version import __version__
from autoprompt.decision._measure import (
    consistency,
    inference_cost,
    neighbour_vote,
    paraphrases,
    score_program,
    score_with_instruction,
    task_paraphrases,
)
from autoprompt.decision._stats import bootstrap_ci, paired_test
from autoprompt.store import FORMATS, RunStore

__all__ = ["DECIDE_FORMAT_VERSION", "Decision", "Prices", "Variant", "bootstrap_ci", "decide", "load_decision",
           "paired_test", "paraphrases"]

logger = logging.getLogger(__name__)

DECIDE_FORMAT_VERSION = FORMATS["decide"][1]
#: the variants compared, simplest first (the order breaks ties)
VARIANTS = ("vanilla", "p", "w", "p -> w", "p -> w -> p")
LABELS = {
    "vanilla": "vanilla (zero-shot)",
    "p": "prompt-optimized (p)",
    "w": "fine-tuned (w)",
    "p -> w": "fine-tuned on the optimized program's traces (p -> w)",
    "p -> w -> p": "combined (p -> w -> p)",
}
#: below this many LM calls a prompt search cannot score two candidates on its first minibatch
MIN_SEARCH_CALLS = 40
#: below this many minutes LoRA on CPU does not get through one validation point on a small task
MIN_FINETUNE_MINUTES = 0.5
#: a difference with a larger p-value is "not significant"
ALPHA = 0.05


@dataclass(frozen=True)
class Prices:
    """Prices that turn tokens and training time into money (``None``: not priced).

    Args:
        input: per 1M prompt tokens.
        output: per 1M completion tokens.
        train_hour: per hour of fine-tuning.
    """

    input: float | None = None
    output: float | None = None
    train_hour: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "train_hour"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise OptionError(f"price {name} must be a non-negative number or None, got {value!r}")

    def per_1000_calls(self, inference: Mapping[str, Any]) -> float | None:
        if self.input is None or self.output is None or not inference:
            return None
        return 1000 * (inference["prompt_tokens_per_call"] * self.input
                       + inference["completion_tokens_per_call"] * self.output) / 1e6


@dataclass
class Variant:
    """One variant and what was measured on it (``skipped``: why it was not run)."""

    name: str
    label: str
    accuracy: float | None = None
    interval: tuple[float, float] | None = None
    n: int = 0
    vs_next: dict[str, Any] | None = None
    inference: dict[str, Any] = field(default_factory=dict)
    one_off: dict[str, Any] = field(default_factory=dict)
    consistency: dict[str, Any] = field(default_factory=dict)
    wording: dict[str, Any] = field(default_factory=dict)
    cost_per_1000_calls: float | None = None
    data_curve: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    scores: list[float] = field(default_factory=list, repr=False)  # per test example (in decision.json: no)
    inputs: list[Any] = field(default_factory=list, repr=False)  # to check that two variants are paired

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("scores")
        out.pop("inputs")
        out["interval"] = list(self.interval) if self.interval else None
        return out


class Decision:
    """The result of :func:`decide`: ``variants`` (by name, simplest first), ``recommendation`` (a
    variant name), ``reasons`` (sentences), ``run_dir``; :meth:`markdown` is ``decision.md``."""

    def __init__(self, *, task: str, variants: dict[str, Variant], recommendation: str, reasons: list[str],
                 run_dir: Path, config: dict[str, Any], reference: dict[str, Any] | None = None) -> None:
        self.task = task
        self.variants = variants
        self.recommendation = recommendation
        self.reasons = reasons
        self.run_dir = run_dir
        self.config = config
        #: the no-LM reference (``None``: not a classifier task): ``method``, ``k``, ``accuracy``, ``interval``,
        #: ``n``, ``dev`` (score per k), ``vs_recommended`` (a paired test on the same test examples)
        self.reference = reference

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "recommendation": self.recommendation, "reasons": self.reasons,
                "variants": {name: v.to_dict() for name, v in self.variants.items()}, "reference": self.reference}

    def markdown(self) -> str:
        return _markdown(self)

    def html(self) -> str:
        """The page ``decision.html``: the table, the reasons and the plots (inline SVG; without
        matplotlib, the ``report`` extra, the page says so instead of a plot)."""
        from autoprompt.decision._html import render_html

        return render_html(self)

    def save(self, store: RunStore) -> None:
        store.write_json("decision.json", self.to_dict())
        store.write_text("decision.md", self.markdown())
        store.write_text("decision.html", self.html())

    def __repr__(self) -> str:
        scores = {n: v.accuracy for n, v in self.variants.items() if v.accuracy is not None}
        return f"Decision(task={self.task!r}, recommendation={self.recommendation!r}, accuracy={scores})"


def decide(
    task: Any,
    *,
    lm: Any = "local",
    calls: int | None = 600,
    finetune_minutes: float | None = None,
    max_traces: int | None = 1000,
    data_options: Mapping[str, Any] | None = None,
    finetune_options: Mapping[str, Any] | None = None,
    optimizer_options: Mapping[str, Any] | None = None,
    prices: Prices | Mapping[str, float] | None = None,
    samples: int = 20,
    wording_samples: int = 50,
    top_k: int = 3,
    data_sizes: Sequence[int] = (50, 200),
    reuse: str | os.PathLike | None = None,
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    runs_root: str | os.PathLike = "runs",
    resume: bool = False,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    test_limit: int | None = None,
    progress: bool = True,
) -> Decision:
    """Measure vanilla, prompt-optimized, fine-tuned and combined variants of ``task`` and recommend one.

    Args:
        task: a :class:`autoprompt.Task` with a test split.
        lm: the LM (``"local"``: the embedded model; ``w`` needs a model a local finetuner serves).
        calls: LM-call cap of each prompt search (``p``); below 40 the ``p`` variants are skipped.
        finetune_minutes: wall-time cap of each fine-tuning (``None``: no cap); below 0.5 the ``w``
            variants are skipped.
        max_traces: traces a ``w`` step trains on (balanced over the labels).
        data_options: more options of the ``w`` steps' data (:class:`autoprompt.bettertogether.WeightStep`,
            e.g. ``{"balance": False}``).
        finetune_options: options of the LoRA finetuner (:class:`autoprompt.finetune.LoRAFinetuner`, e.g.
            ``{"epochs": 2, "rank": 16}``); ``finetune_minutes`` sets its ``max_minutes``.
        optimizer_options: options of the prompt searches (:class:`autoprompt.optimizers.OptunaSearch`, e.g.
            ``{"n_trials": 8, "retrieved_demos": False}``).
        prices: :class:`Prices` or a dict (``input``/``output`` per 1M tokens, ``train_hour``).
        samples: test examples (a seeded, label-stratified sample) for the cost and consistency
            measurements; ``wording_samples`` for the paraphrases and the search's ``top_k`` trials.
        data_sizes: the data curve: ``p`` and ``w`` run again on seeded samples of this many train
            examples (sizes not below the train split are left out: that point is the main run).
        reuse: a :func:`autoprompt.better_together` run folder whose steps are the variants: nothing
            is searched or trained again for them (the data curve still runs, unless ``data_sizes=()``).
        seed, run_dir, runs_root, resume, train_limit, dev_limit, test_limit, progress: as in
            :func:`autoprompt.better_together`.

    Returns:
        A :class:`Decision`; ``decision.md``, ``decision.html`` and ``decision.json`` are in its ``run_dir``.

    Raises:
        TaskError: the task has no test split.
    """
    from autoprompt.lms import LMSpec

    if task.sources.get("test") is None:
        raise TaskError(f"task {task.name!r} has no test split: decide compares variants on examples none of them "
                        "was tuned on; give the task test= (a file, a hub split or rows)")
    if not isinstance(prices, Prices):
        unknown = set(prices or {}) - {"input", "output", "train_hour"}
        if unknown:
            raise OptionError(f"prices takes input, output and train_hour, not {sorted(unknown)}")
        prices = Prices(**(prices or {}))
    for name, value, low in (("samples", samples, 1), ("wording_samples", wording_samples, 1), ("top_k", top_k, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise OptionError(f"{name} must be an integer >= {low}, got {value!r}")
    data_sizes = tuple(data_sizes)
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in data_sizes):
        raise OptionError(f"data_sizes must be positive integers, got {list(data_sizes)}")
    reused = RunStore.open(reuse, "better-together") if reuse is not None else None
    base = LMSpec.from_dict(reused.read_json("config.json")["lm"]) if reused else LMSpec.parse(lm)
    task.validate(("train", "dev", "test"))
    store = RunStore.open(run_dir, "decide") if resume else \
        RunStore.create("decide", path=run_dir, runs_root=runs_root, name=f"{task.name}-decide", seed=seed)
    limits = {"train": train_limit, "dev": dev_limit, "test": test_limit}
    config = {
        "autoprompt_version": __version__,
        "task": {"name": task.name, "source": task.source},
        "lm": base.to_dict(),
        "seed": seed,
        "limits": limits,
        "budget": {"calls": calls, "finetune_minutes": finetune_minutes, "max_traces": max_traces,
                   "data_options": dict(data_options or {}), "finetune_options": dict(finetune_options or {}),
                   # recorded only when given: a run started before the option existed still resumes
                   **({"optimizer_options": dict(optimizer_options)} if optimizer_options else {})},
        "measure": {"samples": samples, "wording_samples": wording_samples, "top_k": top_k},
        "data_sizes": list(data_sizes),  # a resumed run may add points to the curve
        "reuse": str(reused.path.resolve()) if reused else None,
        "prices": asdict(prices),
    }
    if resume:
        store.check_resume(config, ("task", "lm", "seed", "limits", "budget", "measure", "reuse"))
    store.write_json("config.json", config)
    common = _common(base, calls, finetune_minutes, max_traces, dict(data_options or {}), dict(finetune_options or {}),
                     seed, limits, progress)
    common["optimizer_options"] = dict(optimizer_options or {})

    with store.log():
        if reused is not None:
            logger.info("decide %s: task %s, variants of the BetterTogether run %s", store.path, task.name,
                        reused.path)
            steps, skipped = _reuse_variants(reused, task)
        else:
            skipped = _budget_skips(base, calls, finetune_minutes)
            strategies = [name for name in VARIANTS[1:] if name not in skipped] or ["vanilla"]
            logger.info("decide %s: task %s, lm %s, variants %s%s", store.path, task.name, base, strategies,
                        "" if not skipped else f" (skipped: {sorted(skipped)})")
            steps = _run_variants(task, strategies, store, store.path / "variants", common, skipped)
        variants: dict[str, Variant] = {}
        for name in VARIANTS:
            variant = Variant(name, LABELS[name], skipped=skipped.get(name))
            step = steps.get(name)
            if step is not None and name not in skipped:
                _fill(variant, step, steps, task, store, prices, samples=samples, wording_samples=wording_samples,
                      top_k=top_k, seed=seed, progress=progress)
            variants[name] = variant
        _data_curve(variants, task, store, data_sizes, common, skipped)
        _compare(variants)
        recommendation, reasons = _recommend(variants, prices)
        reference = _reference(task, store, limits, variants[recommendation], seed)
        if reference is not None:
            reasons.append(_reference_reason(reference, variants[recommendation]))
        decision = Decision(task=task.name, variants=variants, recommendation=recommendation, reasons=reasons,
                            run_dir=store.path, config=config, reference=reference)
        decision.save(store)
        logger.info("decide: recommended %s (%s)", recommendation, reasons[0] if reasons else "")
    return decision


def load_decision(run_dir: str | os.PathLike) -> Decision:
    """A finished :func:`decide` run from its folder (what ``autoprompt report`` renders again)."""
    store = RunStore.open(run_dir, "decide")
    if not store.exists("decision.json"):
        from autoprompt._exceptions import RunError

        raise RunError(f"{store.path} has no decision.json yet: the decide run did not finish; resume it "
                       "(autoprompt decide TASK --run-dir RUN --resume)")
    data = store.read_json("decision.json")
    variants = {}
    order = sorted(data["variants"], key=lambda n: VARIANTS.index(n) if n in VARIANTS else len(VARIANTS))
    for name, v in ((n, data["variants"][n]) for n in order):  # decision.json sorts its keys
        v = {k: val for k, val in v.items() if k in Variant.__dataclass_fields__}
        v["interval"] = tuple(v["interval"]) if v.get("interval") else None
        variants[name] = Variant(**v)
    return Decision(task=data["task"], variants=variants, recommendation=data["recommendation"],
                    reasons=data["reasons"], run_dir=store.path, config=store.read_json("config.json"),
                    reference=data.get("reference"))  # (runs before the reference have none)


def _common(base: Any, calls: int | None, finetune_minutes: float | None, max_traces: int | None,
            data_options: dict[str, Any], finetune_options: dict[str, Any], seed: int, limits: dict[str, int | None],
            progress: bool) -> dict[str, Any]:
    """The :func:`better_together` arguments every variant run shares (their steps' options must match
    for a run folder to resume)."""
    from autoprompt.bettertogether import WeightStep
    from autoprompt.finetune import get_finetuner
    from autoprompt.usage import Budget

    finetuner = get_finetuner("lora", **{"seed": seed, "progress": progress, **finetune_options,
                                         "max_minutes": finetune_minutes})
    return dict(lm=base, budget=Budget(max_calls=calls) if calls else None,
                steps={"w": WeightStep(finetuner, max_traces=max_traces, **data_options)}, seed=seed,
                train_limit=limits["train"], dev_limit=limits["dev"], test_limit=limits["test"], progress=progress)


def _budget_skips(base: Any, calls: int | None, finetune_minutes: float | None) -> dict[str, str]:
    skipped: dict[str, str] = {}
    if calls is not None and calls < MIN_SEARCH_CALLS:
        for name in ("p", "p -> w", "p -> w -> p"):
            skipped[name] = (f"skipped: a budget of {calls} LM calls per prompt search is below the {MIN_SEARCH_CALLS} "
                             "one search needs to compare two candidates; raise calls")
    w_reason = None
    if finetune_minutes is not None and finetune_minutes < MIN_FINETUNE_MINUTES:
        w_reason = (f"skipped: a fine-tuning budget of {finetune_minutes} min is below {MIN_FINETUNE_MINUTES} min; "
                    "raise finetune_minutes")
    elif not base.is_local:
        w_reason = (f"skipped: no local finetuner serves {base.model}; fine-tune it with better_together and a "
                    "provider's finetuner (e.g. OpenAIFinetuner)")
    if w_reason:
        for name in ("w", "p -> w", "p -> w -> p"):
            skipped.setdefault(name, w_reason)
    return skipped


def _run_variants(task: Any, strategies: Sequence[str], store: RunStore, folder: Path, common: dict[str, Any],
                  skipped: dict[str, str], record: str = "failed.json") -> dict[str, Any]:
    """Run each strategy in one BetterTogether folder (shared prefixes run once; a resumed folder loads
    finished steps). A strategy that fails on its data (e.g. traces of one label) is recorded in
    ``record`` and reported, not rerun; an LM error or bad input still ends the run."""
    from autoprompt.bettertogether import better_together

    failed: dict[str, str] = store.read_json(record)["failed"] if store.exists(record) else {}
    steps: dict[str, Any] = {}
    for strategy in strategies:
        prefix = next((f for f in failed if strategy == f or strategy.startswith(f + " -> ")), None)
        if prefix is not None:
            skipped[strategy] = failed[prefix] if prefix == strategy else f"not run: {prefix!r} failed"
            continue
        try:
            result = better_together(task, strategy, run_dir=folder, resume=(folder / "config.json").is_file(),
                                     **common)
        except (ExportError, FinetuneError) as exc:
            failed[strategy] = skipped[strategy] = f"failed: {exc}"
            store.write_json(record, {"failed": failed})
            logger.warning("variant %r failed, reported and skipped: %s", strategy, exc)
            continue
        steps.update(result.steps)
    if "vanilla" not in steps:  # every variant skipped or failed: the zero-shot program still gets its row
        steps.update(better_together(task, "vanilla", run_dir=folder, resume=(folder / "config.json").is_file(),
                                     **common).steps)
    return steps


def _reuse_variants(reused: RunStore, task: Any) -> tuple[dict[str, Any], dict[str, str]]:
    from autoprompt.bettertogether import load_step

    name = reused.read_json("config.json")["task"]["name"]
    if name != task.name:
        raise TaskError(f"{reused.path} is a BetterTogether run of task {name!r}, not {task.name!r}")
    steps: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for variant in VARIANTS:
        sub = RunStore(reused.path / "steps" / variant.replace(" -> ", "-"), "better-together")
        if sub.exists("step.json"):
            steps[variant] = load_step(sub, task)
        else:
            skipped[variant] = f"not in the reused run {reused.path}"
    return steps, skipped


def _data_curve(variants: dict[str, Variant], task: Any, store: RunStore, sizes: Sequence[int],
                common: dict[str, Any], skipped: dict[str, str]) -> None:
    """``p`` and ``w`` again on seeded samples of ``sizes`` train examples: test score against data."""
    n_train = len(task.examples("train", limit=common["train_limit"]))
    for size in sorted({n for n in sizes if n < n_train}):
        wanted = [v for v in ("p", "w") if variants[v].accuracy is not None]
        if not wanted:
            break
        local_skips: dict[str, str] = {}
        folder = store.path / "data" / f"n{size}"
        steps = _run_variants(task, wanted, store, folder, {**common, "train_limit": size}, local_skips,
                              record=f"data/n{size}-failed.json")
        for name in wanted:
            step = steps.get(name)
            point: dict[str, Any] = {"examples": size}
            if step is None or name in local_skips:
                point["skipped"] = local_skips.get(name, "not run")
            else:
                scores, _ = _test_scores(step)
                point.update(score=sum(scores) / len(scores), interval=list(bootstrap_ci(scores)))
            variants[name].data_curve.append(point)
    for v in variants.values():
        if v.accuracy is not None and v.name in ("p", "w") and v.data_curve:
            v.data_curve.append({"examples": n_train, "score": v.accuracy, "interval": list(v.interval or ())})


# -- measuring ---------------------------------------------------------------------------------------
def _test_scores(step: Any) -> tuple[list[float], list[Any]]:
    """Per-example test scores of a step, from the records its folder holds (in the split's order)."""
    records = RunStore(step.path, "better-together").read_evaluation("test")
    if not records:
        raise TaskError(f"{step.path}/evaluations/test.jsonl is missing: the variant {step.strategy!r} was scored "
                        "without its answers; rerun decide in a new folder")
    return [float(r["score"]) for r in records], [r.get("inputs") for r in records]


def _fill(variant: Variant, step: Any, steps: Mapping[str, Any], task: Any, store: RunStore, prices: Prices, *,
          samples: int, wording_samples: int, top_k: int, seed: int, progress: bool) -> None:
    scores, inputs = _test_scores(step)
    variant.scores, variant.inputs = scores, inputs
    variant.n = len(scores)
    variant.accuracy = sum(scores) / len(scores) if scores else None
    variant.interval = bootstrap_ci(scores, seed=seed) if scores else None
    variant.one_off = _one_off(step.strategy, steps, prices)
    name = f"measure/{step.strategy.replace(' -> ', '-')}.json"
    if store.exists(name):
        measured = store.read_json(name)
        logger.info("variant %r: measurements loaded from %s", step.strategy, store.file(name))
    else:
        measured = _measure(step, task, samples=samples, wording_samples=wording_samples, top_k=top_k, seed=seed,
                            progress=progress)
        store.write_json(name, measured)
    variant.inference = measured["inference"]
    variant.consistency = measured["consistency"]
    variant.wording = measured["wording"]
    variant.cost_per_1000_calls = prices.per_1000_calls(variant.inference)


def _measure(step: Any, task: Any, *, samples: int, wording_samples: int, top_k: int, seed: int,
             progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    with tqdm(total=4, desc=f"measure {step.strategy}", disable=not progress, leave=False) as bar:
        sample = task.examples("test", limit=samples, seed=seed)
        cost = inference_cost(step.program, step.lm, sample)
        bar.update()
        steady = consistency(step.program, task, step.lm, sample)
        bar.update()
        wording_sample = task.examples("test", limit=wording_samples, seed=seed)
        lm = step.lm.build()
        own = [p.signature.instructions for _, p in step.program.named_predictors()]
        by_text, answers = {}, []
        for wording in task_paraphrases(task):  # per predictor of a multi-stage program; one text for one
            text = " / ".join(wording.values())
            by_text[text], said = score_with_instruction(step.program, task, wording_sample, wording, lm)
            answers.append(said)
        bar.update()
        trials = _top_trials(step, task, wording_sample, top_k, lm)
        bar.update()
    values = list(by_text.values())
    wording: dict[str, Any] = {
        "examples": len(wording_sample),
        "instruction": own[0] if len(own) == 1 else own,
        "paraphrases": [{"instruction": t, "score": round(s, 4)} for t, s in by_text.items()],
        "paraphrase_spread": round(max(values) - min(values), 4),
        "paraphrase_sd": round(_sd(values), 4),
        # consistency across wordings: examples on which every paraphrase gets the same answer
        "paraphrase_agreement": round(sum(len(set(said)) == 1 for said in zip(*answers)) / len(wording_sample), 4),
    }
    if trials:
        wording["top_trials"] = trials
        wording["top_trials_spread"] = round(max(t["score"] for t in trials) - min(t["score"] for t in trials), 4)
    return {"inference": cost, "consistency": steady, "wording": wording}


def _top_trials(step: Any, task: Any, examples: list[Any], k: int, lm: Any) -> list[dict[str, Any]]:
    """The ``k`` best trials of the step's own prompt search (when its last step was one), rescored on
    ``examples`` with the step's LM."""
    import optuna

    from autoprompt.optimizers.optuna import program_of_trial

    db = step.path / "run" / "study.db"
    if k == 0 or not db.is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="autoprompt", storage=f"sqlite:///{db}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    out = []
    for trial in sorted(complete, key=lambda t: -t.values[0])[:k]:
        program, _ = program_of_trial(study, task, trial.number)
        score, _ = score_program(program, task, examples, lm)
        out.append({"trial": trial.number, "search_score": round(trial.values[0], 4), "score": round(score, 4)})
    return out


def _one_off(strategy: str, steps: Mapping[str, Any], prices: Prices) -> dict[str, Any]:
    """What making the variant cost: every step of its chain (``p -> w -> p``: p, p -> w, p -> w -> p)."""
    parts = strategy.split(" -> ") if strategy != "vanilla" else []
    out = {"search_lm_calls": 0, "search_tokens": 0, "trace_lm_calls": 0, "finetune_seconds": 0.0,
           "train_tokens": 0, "seconds": 0.0}
    prompt_tokens = completion_tokens = 0
    for i in range(1, len(parts) + 1):
        step = steps[" -> ".join(parts[:i])]
        details = step.details or {}
        usage = details.get("usage") or {}
        out["search_lm_calls"] += int(usage.get("lm_calls", 0))
        out["search_tokens"] += int(usage.get("tokens", 0))
        prompt_tokens += int(usage.get("prompt_tokens", 0))
        completion_tokens += int(usage.get("completion_tokens", 0))
        data = details.get("training_data") or {}  # the examples run ahead whose quota filled cost calls too
        out["trace_lm_calls"] += int(data.get("attempts", 0)) + int(data.get("speculative_attempts", 0))
        tune = details.get("finetune") or {}
        out["finetune_seconds"] += float(tune.get("seconds", 0.0))
        out["train_tokens"] += int(tune.get("train_tokens", 0))
        out["seconds"] += float(step.fit_seconds or step.seconds)
    out["finetune_seconds"] = round(out["finetune_seconds"], 1)
    out["seconds"] = round(out["seconds"], 1)
    cost = 0.0
    priced = False
    if prices.input is not None and prices.output is not None:
        cost += (prompt_tokens * prices.input + completion_tokens * prices.output) / 1e6
        priced = True
    if prices.train_hour is not None:
        cost += out["finetune_seconds"] / 3600 * prices.train_hour
        priced = True
    out["cost"] = round(cost, 4) if priced else None
    return out


def _reference(task: Any, store: RunStore, limits: Mapping[str, int | None], recommended: Variant,
               seed: int) -> dict[str, Any] | None:
    """The no-LM reference (:func:`autoprompt.decision._measure.neighbour_vote`) on the variants' train, dev
    and test rows; its per-example scores in ``measure/reference.json`` (kept on resume)."""
    name = "measure/reference.json"
    if store.exists(name):
        measured = store.read_json(name)
    else:
        measured = neighbour_vote(task, task.examples("train", limit=limits["train"]),
                                  task.examples("dev", limit=limits["dev"]),
                                  task.examples("test", limit=limits["test"]))
        if measured is None:
            return None
        store.write_json(name, measured)
        measured = store.read_json(name)  # as a resumed run reads it (JSON types), so both give the same report
    scores = measured["scores"]
    out = {k: measured[k] for k in ("method", "k", "dev", "dev_n")}
    out.update(accuracy=sum(scores) / len(scores), interval=list(bootstrap_ci(scores, seed=seed)), n=len(scores),
               vs_recommended=None)
    if recommended.accuracy is not None and recommended.inputs == measured["inputs"]:
        out["vs_recommended"] = {"other": recommended.name, **paired_test(scores, recommended.scores)}
    return out


def _reference_reason(ref: Mapping[str, Any], recommended: Variant) -> str:
    lo, hi = ref["interval"]
    text = (f"Reference without an LM: the label most frequent among the {ref['k']} train examples nearest to the "
            f"input (BM25, the search's demo retrieval; k chosen on dev) scores {100 * ref['accuracy']:.1f}% "
            f"(95% interval {100 * lo:.1f}%-{100 * hi:.1f}%)")
    test = ref.get("vs_recommended")
    if test is None:
        return text + "."
    gap = 100 * (ref["accuracy"] - recommended.accuracy)  # type: ignore[operator]
    where = "above" if gap > 0 else "below"
    text += (f", {abs(gap):.1f} points {where} {recommended.label} on the same examples (p = {test['p_value']:.3g}, "
             f"{test['test']})")
    if gap > 0 and test["p_value"] < ALPHA:
        text += ("; no LM variant here beats a nearest-neighbour classifier on the train split: if the task allows "
                 "one, it is cheaper and better")
    return text + "."


def _sd(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# -- comparing and recommending ----------------------------------------------------------------------
def _ranked(variants: Mapping[str, Variant]) -> list[Variant]:
    run = [v for v in variants.values() if v.accuracy is not None]
    return sorted(run, key=lambda v: (-v.accuracy, VARIANTS.index(v.name)))  # type: ignore[operator]


def _compare(variants: Mapping[str, Variant]) -> None:
    """Each variant against the next one down the ranking, on the same test examples."""
    ranked = _ranked(variants)
    for upper, lower in zip(ranked, ranked[1:]):
        if upper.inputs != lower.inputs:
            raise TaskError(f"variants {upper.name!r} and {lower.name!r} were scored on different test examples; "
                            "rerun decide in a new folder")
        upper.vs_next = {"other": lower.name, **paired_test(upper.scores, lower.scores)}


def _recommend(variants: Mapping[str, Variant], prices: Prices) -> tuple[str, list[str]]:
    """The simplest variant whose accuracy is not significantly below the best one's (paired test, p >= 0.05);
    its reasons name the difference, the interval and the costs."""
    ranked = _ranked(variants)
    if not ranked:
        return "vanilla", ["no variant was scored"]
    best = ranked[0]
    tests = {v.name: (paired_test(best.scores, v.scores) if v is not best else None) for v in ranked}
    close = [v for v in ranked if v is best or tests[v.name]["p_value"] >= ALPHA]  # type: ignore[index]
    choice = min(close, key=lambda v: VARIANTS.index(v.name))
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    reasons = []
    lo, hi = choice.interval or (0.0, 0.0)
    if choice is best:
        runner = ranked[1] if len(ranked) > 1 else None
        text = (f"{choice.label}: the best test accuracy, {pct(choice.accuracy)} (95% interval {pct(lo)}-{pct(hi)}, "
                f"{choice.n} examples)")
        if runner is not None:
            t = tests[runner.name]
            gap = 100 * (choice.accuracy - runner.accuracy)  # type: ignore[operator]
            if t["p_value"] < ALPHA:  # type: ignore[index]
                text += f", {gap:.1f} points above {runner.label} (p = {t['p_value']:.3g}, {t['test']})"  # type: ignore[index]
            else:
                text += (f", {gap:.1f} points above {runner.label}, a difference not significant on these examples "
                         f"(p = {t['p_value']:.3g}, {t['test']}); it is the simpler one")  # type: ignore[index]
        reasons.append(text + ".")
        simpler = [v for v in ranked if VARIANTS.index(v.name) < VARIANTS.index(choice.name)]
        if simpler and runner is not None and tests[runner.name]["p_value"] < ALPHA:  # type: ignore[index]
            reasons.append("Every simpler variant is significantly worse on the same examples.")
    else:
        t = tests[choice.name]
        reasons.append(f"{choice.label}: {pct(choice.accuracy)} (95% interval {pct(lo)}-{pct(hi)}), "
                       f"{100 * (best.accuracy - choice.accuracy):.1f} points below the best, {best.label} "  # type: ignore[operator]
                       f"({pct(best.accuracy)}), a difference not significant on these {choice.n} examples "
                       f"(p = {t['p_value']:.3g}, {t['test']}); it is the simpler one to make and keep.")  # type: ignore[index]
    ci, bi = choice.inference, best.inference
    if ci and bi and choice is not best:
        reasons.append(f"Per call it sends {ci['prompt_tokens_per_call']:.0f} prompt tokens against "
                       f"{bi['prompt_tokens_per_call']:.0f}, and takes {ci['seconds_per_example']:.2f} s per example "
                       f"against {bi['seconds_per_example']:.2f} s here.")
    made = choice.one_off
    if made and choice.name != "vanilla":
        parts = [f"{made['search_lm_calls']} search LM calls"] if made["search_lm_calls"] else []
        if made["finetune_seconds"]:
            parts.append(f"{made['trace_lm_calls']} tracing calls and {made['finetune_seconds'] / 60:.1f} min "
                         f"of fine-tuning")
        reasons.append(f"Making it cost {', '.join(parts) or 'nothing measurable'} "
                       f"({made['seconds'] / 60:.1f} min in all).")
    # when fine-tuning pays: a fine-tuned variant with shorter prompts than the choice saves per call
    tuned = [v for v in ranked if "w" in v.name.split(" -> ") and v is not choice and v.inference and ci]
    for v in tuned[:1]:
        saved = ci["prompt_tokens_per_call"] - v.inference["prompt_tokens_per_call"]
        if saved <= 0:
            continue
        extra = (v.one_off.get("cost") or 0.0) - (made.get("cost") or 0.0)
        per_call = None
        if prices.input is not None:
            per_call = saved * prices.input / 1e6
        if per_call and extra > 0:
            reasons.append(f"{v.label} sends {saved:.0f} fewer prompt tokens per call: at the prices given its "
                           f"extra one-off cost ({extra:.2f}) is repaid after {math.ceil(extra / per_call):,} calls.")
        else:
            reasons.append(f"{v.label} sends {saved:.0f} fewer prompt tokens per call (give prices to see after "
                           "how many calls its fine-tuning is repaid).")
    skipped = [v for v in variants.values() if v.skipped]
    if skipped:
        reasons.append("Not compared: " + "; ".join(f"{v.label} ({v.skipped})" for v in skipped) + ".")
    return choice.name, reasons


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table_rows(d: Decision) -> list[list[str]]:
    """The variants table (header first), shared by ``decision.md`` and ``decision.html``."""
    rows = [["variant", "test %", "95% interval", "vs next (p-value)", "prompt tok/call", "compl. tok/call", "s/example",
             "per 1k calls", "making it (min)", "consistency %", "wording spread (pts)", "same answer across wordings %"]]
    for v in d.variants.values():
        if v.skipped:
            rows.append([v.label, v.skipped] + [""] * 10)
            continue
        if v.accuracy is None:
            continue
        lo, hi = v.interval or (0.0, 0.0)
        inf = v.inference
        rows.append([
            v.label, _pct(v.accuracy), f"{_pct(lo)}-{_pct(hi)}",
            f"{v.vs_next['other']} ({v.vs_next['p_value']:.3g})" if v.vs_next else "-",
            f"{inf.get('prompt_tokens_per_call', '-')}", f"{inf.get('completion_tokens_per_call', '-')}",
            f"{inf.get('seconds_per_example', '-')}",
            "-" if v.cost_per_1000_calls is None else f"{v.cost_per_1000_calls:.4f}",
            f"{v.one_off.get('seconds', 0) / 60:.1f}", _pct(v.consistency.get("agreement")),
            _pct(v.wording.get("paraphrase_spread")), _pct(v.wording.get("paraphrase_agreement")),
        ])
    return rows


HOW_TO_READ = (
    "*vs next*: a paired test against the next variant down, on the same test examples (exact McNemar for "
    "0/1 scores). *consistency*: answers sampled at temperature 0.7 (3 per example) equal to the greedy answer. "
    "*wording spread*: the best minus the worst score over five paraphrases of the instruction written from the "
    "signature (no LM); *same answer across wordings*: examples on which all five agree. Tokens and seconds per "
    "call are measured with the LM cache off, on this machine; *making it*: the search, tracing and fine-tuning "
    "time of the variant's steps."
)


def _markdown(d: Decision) -> str:
    lines = [f"# Prompt, fine-tune, or both? Task `{d.task}`", "",
             f"**Recommendation: {LABELS[d.recommendation]}.**", ""]
    lines += [f"- {r}" for r in d.reasons]
    rows = table_rows(d)
    lines += ["", "## Variants", "", "| " + " | ".join(rows[0]) + " |",
              "|---|" + "---:|" * (len(rows[0]) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", HOW_TO_READ, ""]
    curves = [v for v in d.variants.values() if v.data_curve]
    if curves:
        lines += ["## Data needed", "", "Test % against the labelled train examples the variant was made from "
                  "(seeded, label-stratified samples).", "", "| variant | " +
                  " | ".join(str(p["examples"]) for p in curves[0].data_curve) + " |",
                  "|---|" + "---:|" * len(curves[0].data_curve)]
        for v in curves:
            lines.append(f"| {v.label} | " + " | ".join(
                _pct(p.get("score")) if "score" in p else "skipped" for p in v.data_curve) + " |")
        lines.append("")
    for v in d.variants.values():
        if v.wording:
            lines += [f"### Wording: {v.label}", "", "| instruction | test % (sample) |", "|---|---:|"]
            lines += [f"| {p['instruction']} | {_pct(p['score'])} |" for p in v.wording["paraphrases"]]
            for t in v.wording.get("top_trials", []):
                lines.append(f"| search trial {t['trial']} (search score {_pct(t['search_score'])}) | "
                             f"{_pct(t['score'])} |")
            lines.append("")
    lines += [f"Run folder: `{d.run_dir}`; every number above is in `decision.json`, the measurements in "
              "`measure/`, the variants' programs and answers in `variants/steps/` (or the reused run)."]
    return "\n".join(lines) + "\n"
