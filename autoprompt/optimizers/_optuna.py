"""autoprompt's own search: an Optuna study over instructions, demo sets, demo counts and decoding.

1. A candidate pool is built once and stored in the study (``study.user_attrs["pool"]``): per
   predictor, the original instruction plus instructions the proposer LM writes (a candidate it
   cannot produce is skipped and counted), and demo sets: labelled samples of the train split and
   demos bootstrapped from the program's own passing traces.
2. Each trial samples ``<predictor>.instruction``, ``<predictor>.demo_set``, ``<predictor>.n_demos``
   (and ``temperature``, and the task's own ``search_space``) and is scored on growing minibatches of
   the dev split, reporting each as an intermediate value so that the pruner stops weak candidates.
3. The study lives in a storage URL (SQLite in the run directory by default), so a killed run
   resumes with every finished trial, and several workers can share it.
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from typing import Any

import dspy

from autoprompt._exceptions import BudgetExhausted, LMError
from autoprompt.evaluate import MAX_ERROR_SHARE, MAX_LEADING_ERRORS, run_one
from autoprompt.optimizers._base import BaseOptimizer, Context

__all__ = ["OptunaSearch", "POOL_VERSION", "build_program", "stratified_sample"]

logger = logging.getLogger(__name__)

POOL_VERSION = 1

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


def build_program(task: Any, pool: dict, params: dict[str, Any], task_params: dict | None = None) -> dspy.Module:
    """The program a trial's parameters stand for: ``params`` are autoprompt's own (instruction, demo
    set, number of demos, temperature), ``task_params`` what the task's ``search_space`` returned."""
    program = task.make_program()
    if task.configure is not None and task_params:
        program = task.configure(program, dict(task_params))
    for name, predictor in program.named_predictors():
        cands = pool["predictors"].get(name)
        if cands is None:  # a predictor the task's configure() added: left as it is
            continue
        instruction = cands["instructions"][params.get(f"{name}.instruction", 0)]
        predictor.signature = predictor.signature.with_instructions(instruction)
        n_demos = params.get(f"{name}.n_demos", 0)
        demo_set = cands["demo_sets"][params.get(f"{name}.demo_set", 0)] if cands["demo_sets"] else []
        predictor.demos = [dspy.Example(**d) for d in demo_set[:n_demos]]
        temperature = params.get("temperature")
        if temperature:
            predictor.config = {**predictor.config, "temperature": temperature}
    return program


class OptunaSearch(BaseOptimizer):
    """Bayesian search (Optuna TPE) with pruning over the whole prompt space.

    Args:
        n_trials: trials to run in total (a resumed study counts the trials it already has).
        max_demos: most demos per predictor.
        n_demo_sets: demo sets per predictor in the pool (half labelled, half bootstrapped).
        n_instructions: instructions to ask the proposer LM for, besides the original.
        minibatches: sizes of the growing dev minibatches a trial is scored on; the last step is
            always the whole search dev set.
        max_dev: score trials on at most this many dev examples (a seeded sample); the winner is
            then confirmed on the whole dev split by :func:`autoprompt.optimize`.
        pruner: ``"median"``, ``"wilcoxon"`` or ``"none"`` (an Optuna pruner object works too).
        temperatures: decoding temperatures to search (one value = not searched).
        storage: an Optuna storage URL; default ``sqlite:///<run_dir>/study.db``.
        study_name: the study's name in the storage.
        jobs: trials run concurrently in this process.
        multi_objective: also minimise prompt tokens; the result keeps the Pareto front.

    Example:
        >>> OptunaSearch(n_trials=8).name
        'optuna'
    """

    name = "optuna"

    def __init__(
        self,
        n_trials: int = 16,
        max_demos: int = 4,
        n_demo_sets: int = 4,
        n_instructions: int = 2,
        minibatches: tuple[int, ...] = (20, 50),
        max_dev: int | None = 100,
        pruner: Any = "median",
        temperatures: tuple[float, ...] = (0.0,),
        storage: str | None = None,
        study_name: str = "autoprompt",
        jobs: int = 1,
        multi_objective: bool = False,
    ) -> None:
        self.n_trials = n_trials
        self.max_demos = max_demos
        self.n_demo_sets = n_demo_sets
        self.n_instructions = n_instructions
        self.minibatches = tuple(minibatches)
        self.max_dev = max_dev
        self.pruner = pruner
        self.temperatures = tuple(temperatures)
        self.storage = storage
        if storage:
            from autoprompt._secrets import register_url

            register_url(storage)  # its password, redacted by value from every file and log line
        self.study_name = study_name
        self.jobs = jobs
        self.multi_objective = multi_objective

    def options(self) -> dict[str, Any]:
        out = super().options()
        out["pruner"] = self.pruner if isinstance(self.pruner, str) else type(self.pruner).__name__
        if self.storage:  # never write a database password into the run's files
            from sqlalchemy.engine import make_url

            out["storage"] = make_url(self.storage).render_as_string(hide_password=True)
        return out

    # -- the study ---------------------------------------------------------------------------
    def _make_pruner(self) -> Any:
        import optuna

        if not isinstance(self.pruner, str):
            return self.pruner
        if self.multi_objective or self.pruner == "none":
            return optuna.pruners.NopPruner()
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        if self.pruner == "wilcoxon":
            with warnings.catch_warnings():  # "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.pruners.WilcoxonPruner(p_threshold=0.1)
        raise ValueError(f"pruner must be 'median', 'wilcoxon', 'none' or an optuna pruner, got {self.pruner!r}")

    def _per_example_reports(self) -> bool:
        import optuna

        pruner = self.pruner if not isinstance(self.pruner, str) else None
        return self.pruner == "wilcoxon" or isinstance(pruner, optuna.pruners.WilcoxonPruner)

    def storage_url(self, context: Context) -> str:
        return self.storage or f"sqlite:///{context.run_dir / 'study.db'}"

    def open_study(self, context: Context) -> Any:
        import optuna

        directions = ["maximize", "minimize"] if self.multi_objective else ["maximize"]
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                self.storage_url(context),
                heartbeat_interval=15,
                grace_period=60,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        return optuna.create_study(
            storage=storage,
            study_name=self.study_name,
            directions=directions,
            sampler=optuna.samplers.TPESampler(seed=context.seed + 1000 * context.worker, multivariate=True),
            pruner=self._make_pruner(),
            load_if_exists=True,
        )

    def compile(self, program: dspy.Module, task: Any, context: Context) -> dspy.Module:
        self.run_trials(program, task, context)
        return self.best_program(task)

    def run_trials(self, program: dspy.Module, task: Any, context: Context) -> Any:
        """Open (or join) the study, build or reuse the candidate pool, run trials until the study
        holds ``n_trials`` finished ones. Several processes may run this on one storage."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.open_study(context)
        pool = study.user_attrs.get("pool")
        if pool is None:
            pool = self.build_pool(program, task, context)
            latest = optuna.load_study(study_name=self.study_name, storage=study._storage).user_attrs.get("pool")
            if latest is None:
                study.set_user_attr("pool", pool)
            else:  # another worker stored its pool first: everyone uses that one
                pool = latest
        else:
            logger.info("reusing the candidate pool stored in the study")
        if context.resume:
            # trials left RUNNING by a killed process will never finish: mark them failed now
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                study._storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
                logger.warning("trial %d was left running by a killed process; marked failed", trial.number)
        self.study_ = study
        self.pool_ = pool
        order = list(range(len(context.devset)))
        random.Random(context.seed).shuffle(order)
        devset = [context.devset[i] for i in order][: self.max_dev]
        steps = sorted({min(s, len(devset)) for s in self.minibatches} | {len(devset)})

        # Optuna runs n_jobs > 1 trials in its own threads, which do not see this thread's DSPy context
        settings = {"lm": dspy.settings.lm, "adapter": dspy.settings.adapter,
                    "usage_tracker": dspy.settings.usage_tracker}

        def objective(trial: Any) -> Any:
            with dspy.context(**settings):
                return self._run_trial(trial, task, pool, devset, steps, context)

        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=finished))
        remaining = max(0, self.n_trials - done)
        logger.info("study %r: %d trials done, %d to run", self.study_name, done, remaining)
        if remaining:
            study.optimize(
                objective,
                n_trials=remaining,
                n_jobs=self.jobs,
                callbacks=[_stop_on_budget(context), optuna.study.MaxTrialsCallback(self.n_trials, states=finished)],
                show_progress_bar=context.progress,
            )
        return study

    def best_program(self, task: Any, trial_number: int | None = None) -> dspy.Module:
        """The program of the best trial (or of ``trial_number``, e.g. a point of the Pareto front)."""
        import optuna

        study = self.study_
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if trial_number is not None:
            trial = study.trials[trial_number]
        elif not complete:
            logger.warning("no trial completed; keeping the original program")
            return task.make_program()
        elif self.multi_objective:
            trial = max(study.best_trials, key=lambda t: t.values[0])
        else:
            trial = study.best_trial
        self.best_trial_ = trial.number
        self.task_params_ = trial.user_attrs.get("task_params", {})
        return build_program(task, self.pool_, trial.params, self.task_params_)

    # -- one trial ---------------------------------------------------------------------------
    def _suggest(self, trial: Any, task: Any, pool: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        params: dict[str, Any] = {}
        for name, cands in pool["predictors"].items():
            params[f"{name}.instruction"] = trial.suggest_categorical(
                f"{name}.instruction", list(range(len(cands["instructions"])))
            )
            if cands["demo_sets"] and self.max_demos > 0:
                params[f"{name}.demo_set"] = trial.suggest_categorical(
                    f"{name}.demo_set", list(range(len(cands["demo_sets"])))
                )
                params[f"{name}.n_demos"] = trial.suggest_int(f"{name}.n_demos", 0, self.max_demos)
        if len(self.temperatures) > 1:
            params["temperature"] = trial.suggest_categorical("temperature", list(self.temperatures))
        task_params = task.search_space(trial) if task.search_space is not None else {}
        trial.set_user_attr("task_params", task_params)
        return params, task_params

    def _run_trial(self, trial, task, pool, devset, steps, context) -> Any:
        import optuna

        params, task_params = self._suggest(trial, task, pool)
        program = build_program(task, pool, params, task_params)
        before = context.meter.snapshot()
        started = time.monotonic()
        total = 0.0
        done = 0
        failures = errors = 0
        pruned = False
        per_example = self._per_example_reports()
        boundaries = set(steps)
        try:
            for i, example in enumerate(devset):
                prediction, failure = run_one(program, example)
                failures += failure is not None
                if failure is not None and failure != "parse":
                    errors += 1
                    if errors < i + 1:  # after a success: the server fails now and then (leading ones raise)
                        logger.warning("trial %d: LM error on dev example %d: %s", trial.number, i, failure)
                    if errors == i + 1 and errors >= MAX_LEADING_ERRORS:  # the LM is down, not the prompt bad
                        raise LMError(f"the LM failed on the first {errors} dev examples of trial {trial.number}; "
                                      f"last {failure}. Check the LM; --resume continues the study")
                value = task.score(example, prediction)
                total += value
                done = i + 1
                if self.multi_objective:
                    continue
                if per_example:  # WilcoxonPruner compares trials example by example
                    trial.report(value, step=i)
                if done in boundaries:
                    if not per_example:  # other pruners compare running means at each minibatch
                        trial.report(total / done, step=done)
                    if done < len(devset) and trial.should_prune():
                        pruned = True
                        break
        except BudgetExhausted as exc:
            logger.info("trial %d stopped: %s", trial.number, exc)
            trial.set_user_attr("budget_exhausted", True)
            trial.study.stop()
            pruned = True
        after = context.meter.snapshot()
        prompt_tokens = _prompt_tokens(program, task, devset[0])
        trial.set_user_attr("lm_calls", after["lm_calls"] - before["lm_calls"])
        trial.set_user_attr("tokens", after["tokens"] - before["tokens"])
        trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
        trial.set_user_attr("examples", done)
        trial.set_user_attr("failures", failures)
        trial.set_user_attr("lm_errors", errors)
        trial.set_user_attr("prompt_tokens", prompt_tokens)
        trial.set_user_attr("score_so_far", total / done if done else 0.0)
        if errors >= MAX_LEADING_ERRORS and errors > MAX_ERROR_SHARE * done:
            raise LMError(f"the LM failed on {errors} of {done} dev examples of trial {trial.number} (more than "
                          f"{MAX_ERROR_SHARE:.0%}); its score would measure the server: check the LM, then --resume")
        if pruned:
            raise optuna.TrialPruned()
        score = total / done
        return (score, prompt_tokens) if self.multi_objective else score

    # -- the candidate pool ------------------------------------------------------------------
    def build_pool(self, program: dspy.Module, task: Any, context: Context) -> dict:
        """Instructions and demo sets per predictor; see the module docstring."""
        rng = random.Random(context.seed)
        pool: dict[str, Any] = {"version": POOL_VERSION, "predictors": {}, "skipped": {}}
        n_labeled = self.n_demo_sets - self.n_demo_sets // 2
        n_boot = self.n_demo_sets // 2
        boot_sets, boot_failed = self._bootstrap(program, task, context, n_boot, rng)
        instructions, inst_failed = self._propose(program, task, context, rng)
        for name, predictor in program.named_predictors():
            fields = set(predictor.signature.fields)
            labeled = []
            for _ in range(n_labeled if self.max_demos else 0):
                sample = stratified_sample(context.trainset, self.max_demos, task.label_field, rng)
                labeled.append([{k: v for k, v in ex.items() if k in fields} for ex in sample])
            pool["predictors"][name] = {
                "instructions": instructions[name],
                "demo_sets": labeled + [s for s in boot_sets.get(name, []) if s],
            }
        pool["skipped"] = {"instructions": inst_failed, "bootstrap_examples": boot_failed}
        logger.info(
            "candidate pool: %s; skipped %d instruction proposals and %d bootstrap examples",
            {n: (len(c["instructions"]), len(c["demo_sets"])) for n, c in pool["predictors"].items()},
            inst_failed,
            boot_failed,
        )
        return json.loads(json.dumps(pool, default=str))

    def _bootstrap(self, program, task, context, n_sets, rng) -> tuple[dict[str, list], int]:
        sets: dict[str, list] = {name: [] for name, _ in program.named_predictors()}
        failed = 0
        if n_sets == 0 or self.max_demos == 0:
            return sets, failed
        lm = context.proposer_lm or dspy.settings.lm
        candidates = list(context.trainset)
        rng.shuffle(candidates)
        attempts = iter(candidates)
        calls_left = n_sets * self.max_demos * 3  # at most this many bootstrap runs of the program
        # like the labelled sets, bootstrapped sets are balanced over the labels (when declared)
        quota = -(-self.max_demos // len(task.choices)) if task.choices else self.max_demos
        for _ in range(n_sets):
            current: dict[str, list] = {name: [] for name in sets}
            per_label: dict[str, int] = {}
            while min(len(v) for v in current.values()) < self.max_demos:
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
                    if name is not None and len(current[name]) < self.max_demos:
                        current[name].append({**inputs, **dict(outputs)})
            for name in sets:
                sets[name].append(current[name])
        return sets, failed

    def _propose(self, program, task, context, rng) -> tuple[dict[str, list[str]], int]:
        out: dict[str, list[str]] = {}
        failed = 0
        lm = context.proposer_lm or dspy.settings.lm
        propose = dspy.Predict(ProposeInstruction)
        for name, predictor in program.named_predictors():
            original = predictor.signature.instructions
            found = [original]
            fields = list(predictor.signature.fields)
            for i in range(self.n_instructions):
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


def _prompt_tokens(program: dspy.Module, task: Any, example: dspy.Example) -> int:
    """Tokens of the prompt the program sends for one example (all predictors, chars/4 estimate)."""
    adapter = dspy.settings.adapter or dspy.JSONAdapter()
    chars = 0
    for _, predictor in program.named_predictors():
        inputs = {k: example[k] for k in predictor.signature.input_fields if k in example}
        messages = adapter.format(predictor.signature, predictor.demos, inputs)
        chars += sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 4


def _stop_on_budget(context: Context):
    def callback(study: Any, trial: Any) -> None:
        reason = context.meter.exhausted()
        if reason is not None:
            logger.warning("stopping the search: budget spent (%s); keeping the best so far", reason)
            study.stop()

    return callback
