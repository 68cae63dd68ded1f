"""The study: :class:`OptunaSearch`, the optimizer that opens (or joins) an Optuna study and runs trials."""

from __future__ import annotations

import logging
import math
import random
import warnings
from typing import Any

import dspy

from autoprompt._exceptions import OptionError
from autoprompt._retrieval import ORDERS
from autoprompt.optimizers._base import BaseOptimizer, Context
from autoprompt.optimizers.optuna._pool import build_pool
from autoprompt.optimizers.optuna._prior import refit_reserve
from autoprompt.optimizers.optuna._trial import (build_program, fitted_prior, prior_start_params, refit_prior,
                                                 run_trial, start_params)

__all__ = ["OptunaSearch", "SELECT_RULES", "select_trial"]

logger = logging.getLogger(__name__)

#: the values of ``OptunaSearch(demo_order=)``
DEMO_ORDERS = (*ORDERS, "search")
#: the values of ``OptunaSearch(select=)``
SELECT_RULES = ("one-se", "best")
#: trials a search runs when neither ``n_trials`` nor a budget says how many
DEFAULT_TRIALS = 16
#: repeated trials in a row after which a search stops (:func:`_stop_on_repeats`)
MAX_REPEATS = 10


class OptunaSearch(BaseOptimizer):
    """Bayesian search (Optuna TPE) with pruning over the whole prompt space.

    Args:
        n_trials: trials to run in total (a resumed study counts the trials it already has). ``None`` (the
            default): as many as the run's budget buys when it has one (LM calls, tokens or seconds:
            ``optimize(budget=...)``), else 16. A trial whose program an earlier trial already had (the same
            parameters; a fixed demo set's ``n_demos`` counted up to the set's size) repeats its outcome
            without an LM call (:func:`autoprompt.optimizers.optuna._trial.duplicate_of`; attribute
            ``duplicate_of``) and counts as a trial; after 10 such repeats in a row the search stops: the
            sampler has nothing new to propose.
        max_demos: most demos per predictor (default 8: the warm start may take 8 retrieved demos, see
            ``demo_order``).
        n_demo_sets: demo sets per predictor in the pool (half labelled, half bootstrapped).
        n_instructions: instructions to ask the proposer LM for, besides the original.
        n_templates: rewordings of the original instruction written from the signature without an LM
            (up to 4: "answer with the label only", the inputs and the declared choices spelled out,
            ...) added to the candidates. Default 0: alone, none beat the original instruction on SST-2
            dev (-2.0 to 0.0 points, ``benchmarks/results/search_moves.md``).
        calibrate: also search contextual calibration of the label choice (parameter
            ``<predictor>.calibrate``, its strength: 0 or 0.5): a trial that takes it measures its
            prompt's label bias on content-free inputs (3 LM calls) and corrects it with a ``logit_bias``
            (:mod:`autoprompt._calibration`; the embedded model only: the ids are its tokenizer's; other LMs
            are not offered it). Alone it helps some programs and hurts others, hence searched rather than
            applied: at half strength SST-2 zero-shot 55.5 -> 62.5% and Iris with 4 retrieved demos 74 ->
            80%, but SST-2 with retrieved demos 70.0 -> 65.5% (``benchmarks/results/search_moves.md``).
        retrieved_demos: also search per-input demos: a trial may take, instead of a fixed demo set, the
            ``n_demos`` labelled train examples nearest to each input (BM25 over the input fields,
            :mod:`autoprompt._retrieval`; parameter ``<predictor>.retrieve``). On by default: alone, 4
            retrieved demos scored 70.0% on SST-2 dev (zero-shot 55.5, 4 fixed labelled demos 65.2 on
            average) and 74% on Iris (30 and 30; ``benchmarks/results/search_moves.md``).
        label_prior: also search the neighbours' label prior (parameter ``<predictor>.prior``): a trial that
            takes it adds, at each call, the log share of each label among the input's 64 BM25-nearest train
            examples (times a weight) and a bias to the label's logit (a per-call ``logit_bias``,
            :mod:`autoprompt._vote_prior`); it fits the weight and the bias on the label probabilities of its
            dev rows (the rows every trial reads, one call each) and is scored cross-fitted over 10 folds
            (:mod:`autoprompt.optimizers.optuna._prior`). With it the warm start is followed by a second
            enqueued trial: 4 fixed, label-balanced demos and the prior (a prior trial takes fixed demos only:
            per-input demos would count the neighbours twice). On SST-2 that rule, fitted outside the
            search, scored 78.7-80.7% test over three demo seeds, 3-5 points above the neighbours' vote
            (``benchmarks/results/vote_prior.md``). Offered only to a one-predictor program whose only output
            is the task's label, labels with distinct first tokens, the embedded engine (else logged and not
            searched: e.g. Banking77, whose labels share first tokens). On by default; the measured effect on
            the search is in ``benchmarks/results/optimizers.md`` (README, *Measured*).
        prior_refit: when the chosen trial (``select``) takes the label prior, read its label probabilities on
            up to this many more dev rows (the search's sample continued past ``max_dev``; one call each) and refit the
            prior's weight and bias on all its rows. Under a cap on LM calls the trials leave these calls for it
            when the cap still buys 4 whole trials beside them
            (:func:`autoprompt.optimizers.optuna._prior.refit_reserve`; else the refit gets what the trials
            left, usually nothing). Default 0 (no refit): at 600 calls on SST-2, 100 more rows moved the same
            three winners' test scores by +0.5, 0.0 and -1.8 points (``benchmarks/results/prior_refit.md``); what
            it gives is an honest estimate of the winner (its cross-fitted score over all the rows, in the log:
            79-82% where the trials' own rows said 84-87; test 76.1-77.8).
        demo_order: the order of the per-input demos: ``"similarity"`` (the nearest next to the input),
            ``"vote"`` (grouped by label, the label most of them carry next to the input:
            :class:`autoprompt._retrieval.Retriever`) or ``"search"`` (the default: a parameter,
            ``<predictor>.demo_order``; the warm start takes vote). Why vote: shown 4 neighbours, the 135M
            model answers about as well as the nearest one's label and below their vote
            (``benchmarks/results/retrieval_ceiling.md``); by vote, 8 demos scored 74.5% on SST-2 dev
            (68.0 by similarity) and 84.4% on Banking77's (81.8). The order only applies to a predictor that
            outputs the task's label.
        select: which complete trial the search returns: ``"one-se"`` (the default; the one-standard-error
            rule, :func:`select_trial`) the shortest prompt among the trials within one standard error of the
            best score, ``"best"`` the best score. Why: near-tied trials on 100 dev rows are told apart by noise,
            and the best-scoring one is then the luckiest; among them the shortest prompt is the cheapest to
            serve. Measured on SST-2 at 600 calls (the same search either way): test 79.1, 74.8, 78.7% against
            76.8, 77.8, 78.0 returning the best, the same mean with shorter prompts
            (``benchmarks/results/optimizers.md``, README *Measured*). Multi-objective searches keep their
            Pareto front.
        warm_start: a new study's first trial is the configuration the moves benchmark found best on
            every shipped task (per-input demos ordered by vote, 4 or 8 of them, whichever count's
            neighbour vote scores best on the dev rows (no LM call), the task's own instruction,
            uncalibrated; see
            :func:`autoprompt.optimizers.optuna._trial.start_params`), then TPE samples as usual. At 600 LM calls
            the search completes about 4 trials: without it the first is random (SST-2 seed 0 at
            cbd1d04: 65.0% dev, 60.3% test, its best trial calibrated at full strength).
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
        n_trials: int | None = None,
        max_demos: int = 8,
        n_demo_sets: int = 4,
        n_instructions: int = 2,
        n_templates: int = 0,
        retrieved_demos: bool = True,
        calibrate: bool = True,
        label_prior: bool = True,
        demo_order: str = "search",
        prior_refit: int = 0,
        select: str = "one-se",
        warm_start: bool = True,
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
        self.n_templates = n_templates
        self.retrieved_demos = retrieved_demos
        self.calibrate = calibrate
        self.label_prior = label_prior
        if prior_refit < 0:
            raise OptionError(f"prior_refit must be 0 or more dev rows, got {prior_refit!r}")
        self.prior_refit = prior_refit
        if select not in SELECT_RULES:
            raise OptionError(f"select must be one of {list(SELECT_RULES)}, got {select!r}")
        self.select = select
        if demo_order not in DEMO_ORDERS:
            raise OptionError(f"demo_order must be one of {list(DEMO_ORDERS)}, got {demo_order!r}")
        self.demo_order = demo_order
        self.warm_start = warm_start
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
        study = self.run_trials(program, task, context, refit=True)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if self.prior_refit and not self.multi_objective and complete:
            refit_prior(study, select_trial(complete, self.select), task, self.pool_, self._dev_rows(context)[1],
                        context)
        return self.best_program(task)

    def _dev_rows(self, context: Context) -> tuple[list, list]:
        """``(the rows every trial reads, the rows a refit of the winner's prior reads next)``: a seeded
        shuffle of the dev split, cut at ``max_dev`` and ``max_dev + prior_refit``."""
        order = list(range(len(context.devset)))
        random.Random(context.seed).shuffle(order)
        rows = [context.devset[i] for i in order]
        if self.max_dev is None:
            return rows, []
        return rows[: self.max_dev], rows[self.max_dev: self.max_dev + self.prior_refit]

    def run_trials(self, program: dspy.Module, task: Any, context: Context, *, refit: bool = False) -> Any:
        """Open (or join) the study, build or reuse the candidate pool, run trials until the study
        holds ``n_trials`` finished ones. Several processes may run this on one storage. ``refit``: this
        process refits the winner's label prior afterwards (:meth:`compile`), so under a call cap the trials
        leave it the calls :func:`autoprompt.optimizers.optuna._prior.refit_reserve` grants."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = self.open_study(context)
        pool = study.user_attrs.get("pool")
        if pool is None:
            pool = build_pool(program, task, context, max_demos=self.max_demos, n_demo_sets=self.n_demo_sets,
                              n_instructions=self.n_instructions, n_templates=self.n_templates,
                              retrieval=self.retrieved_demos, calibrate=self.calibrate,
                              demo_orders=ORDERS if self.demo_order == "search" else (self.demo_order,),
                              label_prior=self.label_prior)
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
        devset, refit_rows = self._dev_rows(context)
        steps = sorted({min(s, len(devset)) for s in self.minibatches} | {len(devset)})

        # Optuna runs n_jobs > 1 trials in its own threads, which do not see this thread's DSPy context
        settings = {"lm": dspy.settings.lm, "adapter": dspy.settings.adapter,
                    "usage_tracker": dspy.settings.usage_tracker}

        def objective(trial: Any) -> Any:
            with dspy.context(**settings):
                return run_trial(trial, task, pool, devset, steps, context, max_demos=self.max_demos,
                                 temperatures=self.temperatures, multi_objective=self.multi_objective,
                                 per_example=self._per_example_reports())

        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        start = start_params(pool, max_demos=self.max_demos) if self.warm_start else {}
        prior_start = prior_start_params(pool, max_demos=self.max_demos) if self.warm_start else {}
        if (start or prior_start) and not study.get_trials(deepcopy=False):
            for params in (start, prior_start):  # workers racing here enqueue each once
                if params:
                    study.enqueue_trial(params, skip_if_exists=True)
        done = len(study.get_trials(deepcopy=False, states=finished))
        n_trials = self.n_trials
        if n_trials is None:
            budget = context.meter.budget
            limited = any(cap is not None for cap in (budget.max_calls, budget.max_tokens, budget.max_seconds))
            n_trials = None if limited else DEFAULT_TRIALS
        remaining = None if n_trials is None else max(0, n_trials - done)
        logger.info("study %r: %d trials done, %s", self.study_name, done,
                    "more until the budget is spent" if remaining is None else f"{remaining} to run")
        callbacks = [_stop_on_budget(context), _stop_on_repeats()]
        if n_trials is not None:
            callbacks.append(optuna.study.MaxTrialsCallback(n_trials, states=finished))
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        priored = any(cands.get("label_prior") for cands in pool["predictors"].values())
        reserve = 0
        if refit and priored and self.prior_refit and not self.multi_objective:
            reserve = refit_reserve(context.meter.budget.max_calls, context.meter.calls, len(refit_rows), len(devset))
        if reserve:
            logger.info("the trials leave %d LM calls for refitting the winner's label prior", reserve)
        with context.meter.holding_back(reserve):
            for _ in waiting if self.jobs > 1 else ():
                # the enqueued trials alone first: two of Optuna's threads can pop the same waiting trial from
                # SQLite, and the second then fails with "Cannot tell a COMPLETE trial"
                if remaining == 0 or context.meter.exhausted() is not None:
                    break
                study.optimize(objective, n_trials=1, n_jobs=1, callbacks=callbacks, show_progress_bar=False)
                remaining = None if remaining is None else remaining - 1
            if remaining != 0 and context.meter.exhausted() is None:
                study.optimize(objective, n_trials=remaining, n_jobs=self.jobs, callbacks=callbacks,
                               show_progress_bar=context.progress and remaining is not None)
        return study

    def best_program(self, task: Any, trial_number: int | None = None) -> dspy.Module:
        """The program of the trial ``select`` chooses (or of ``trial_number``, e.g. a point of the Pareto front)."""
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
            trial = select_trial(complete, self.select)
            if trial.number != study.best_trial.number:
                best = study.best_trial
                logger.info("trial %d chosen (score %.3f, %s prompt tokens) over the best-scoring trial %d (%.3f, %s "
                            "tokens): within one standard error of it, and a shorter prompt", trial.number,
                            trial.value, trial.user_attrs.get("prompt_tokens"), best.number, best.value,
                            best.user_attrs.get("prompt_tokens"))
        self.best_trial_ = trial.number
        self.task_params_ = trial.user_attrs.get("task_params", {})
        return build_program(task, self.pool_, trial.params, self.task_params_, trial.user_attrs.get("logit_bias"),
                             fitted_prior(study, trial))


def select_trial(trials: list, rule: str = "one-se") -> Any:
    """The trial a single-objective search returns among its complete ``trials``: ``"best"``, the best score
    (the earliest of equals, as Optuna's ``best_trial``); ``"one-se"``, the one-standard-error rule (Breiman et
    al. 1984; Hastie et al., *The Elements of Statistical Learning*, 7.10): among the trials scored on as many
    rows as the best one and within one standard error of its score, the one with the shortest prompt
    (``prompt_tokens``; ties to the better score, then the earlier trial). The standard error is the best
    score's ``sqrt(v (1 - v) / n)``: exact for 0/1 scores, an upper bound for any score in [0, 1].

    Example:
        >>> from types import SimpleNamespace as T
        >>> trials = [T(number=0, value=0.84, user_attrs={"examples": 100, "prompt_tokens": 467}),
        ...           T(number=1, value=0.83, user_attrs={"examples": 100, "prompt_tokens": 389}),
        ...           T(number=2, value=0.70, user_attrs={"examples": 100, "prompt_tokens": 200})]
        >>> select_trial(trials, "best").number, select_trial(trials, "one-se").number
        (0, 1)
    """
    if rule not in SELECT_RULES:
        raise ValueError(f"rule must be one of {list(SELECT_RULES)}, got {rule!r}")
    best = max(trials, key=lambda t: (t.value, -t.number))
    n = best.user_attrs.get("examples") or 0
    if rule == "best" or n <= 0:
        return best
    se = math.sqrt(max(best.value * (1.0 - best.value), 0.0) / n)
    near = [t for t in trials if t.value >= best.value - se - 1e-9 and t.user_attrs.get("examples") == n]
    return min(near, key=lambda t: (t.user_attrs.get("prompt_tokens", math.inf), -t.value, t.number))


def _stop_on_repeats(limit: int = MAX_REPEATS):
    """A callback that stops the study after ``limit`` trials in a row repeated earlier ones' programs
    (cache hits are free, so a search bounded by its budget alone would never end on a space it has covered)."""
    def callback(study: Any, trial: Any) -> None:
        recent = study.get_trials(deepcopy=False)[-limit:]
        if len(recent) == limit and all("duplicate_of" in t.user_attrs for t in recent):
            logger.warning("stopping the search: the last %d trials repeated earlier trials' programs (the "
                           "sampler has nothing new to propose)", limit)
            study.stop()

    return callback


def _stop_on_budget(context: Context):
    def callback(study: Any, trial: Any) -> None:
        reason = context.meter.exhausted()
        if reason is not None:
            logger.warning("stopping the search: budget spent (%s); keeping the best so far", reason)
            study.stop()

    return callback
