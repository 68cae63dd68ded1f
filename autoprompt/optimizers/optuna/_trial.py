"""One trial of the search: the program its parameters stand for, and its score on growing minibatches."""

from __future__ import annotations

import logging
import time
from typing import Any

import dspy

from autoprompt._adapter import CompactJSONAdapter
from autoprompt._calibration import calibrate_program, with_logit_bias
from autoprompt._exceptions import BudgetExhausted, LMError
from autoprompt.evaluate import MAX_ERROR_SHARE, MAX_LEADING_ERRORS, run_one
from autoprompt._retrieval import Retriever, attach, demos_for
from autoprompt._vote_prior import attach_prior, prior_of
from autoprompt.optimizers.optuna._prior import cross_fitted, fit_prior, prior_for, prior_rows
from autoprompt.optimizers._base import Context

__all__ = ["build_program", "duplicate_of", "fitted_prior", "prior_start_params", "program_of_trial", "refit_prior",
           "run_trial", "start_params", "suggest"]

logger = logging.getLogger(__name__)

#: the strengths of calibration a trial samples (0: none; see :func:`autoprompt._calibration.label_bias`).
#: Not 1.0, Zhao et al.'s full correction: it never beat half strength on the four programs measured at both
#: (SST-2 zero-shot 60.5 vs 62.5%, 4 labelled demos 54.2 vs 64.5, 4 retrieved 63.5 vs 65.5; Iris
#: zero-shot 8 vs 30; ``benchmarks/results/search_moves.md``): a search at a small budget does better without it
CALIBRATION_STRENGTHS = (0.0, 0.5)


def build_program(task: Any, pool: dict, params: dict[str, Any], task_params: dict | None = None,
                  logit_bias: dict[str, dict] | None = None, label_prior: dict[str, dict] | None = None
                  ) -> dspy.Module:
    """The program a trial's parameters stand for: ``params`` are autoprompt's own (instruction, demo
    set, number of demos, temperature), ``task_params`` what the task's ``search_space`` returned,
    ``logit_bias`` the calibration a trial measured per predictor (its ``logit_bias`` user attribute),
    ``label_prior`` the prior's weight and biases a trial fitted per predictor (its ``label_prior`` user
    attribute; a predictor whose ``prior`` parameter is on but has none fitted yet gets weight 1, no bias)."""
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
        if params.get(f"{name}.retrieve") and n_demos > 0:  # per-input demos, nearest train examples
            order = params.get(f"{name}.demo_order", cands.get("demo_orders", ["similarity"])[0])
            attach(predictor, Retriever(cands["retrieval"], list(predictor.signature.input_fields), n_demos,
                                        order=order, label_field=task.label_field))
        else:
            demo_set = cands["demo_sets"][params.get(f"{name}.demo_set", 0)] if cands["demo_sets"] else []
            predictor.demos = [dspy.Example(**d) for d in demo_set[:n_demos]]
        temperature = params.get("temperature")
        if temperature:
            predictor.config = {**predictor.config, "temperature": temperature}
        if params.get(f"{name}.prior") and cands.get("label_prior"):
            fitted = (label_prior or {}).get(name, {"weight": 1.0, "bias": {}})
            attach_prior(predictor, prior_for(cands, task, list(predictor.signature.input_fields),
                                              weight=fitted["weight"], bias=fitted["bias"]))
    return with_logit_bias(program, {name: bias for name, bias in (logit_bias or {}).items()
                                     if params.get(f"{name}.calibrate")})


def program_of_trial(study: Any, task: Any, trial_number: int) -> tuple[dspy.Module, dict[str, Any]]:
    """``(program, task_params)`` of one trial of a study (e.g. a point of the Pareto front): what
    ``autoprompt export --trial`` and the report rebuild."""
    from autoprompt._exceptions import RunError
    from autoprompt.optimizers.optuna._pool import load_pool

    if not 0 <= trial_number < len(study.trials):
        raise RunError(f"trial {trial_number} does not exist; the study has trials 0..{len(study.trials) - 1}")
    trial = study.trials[trial_number]
    task_params = trial.user_attrs.get("task_params", {})
    return build_program(task, load_pool(study), trial.params, task_params, trial.user_attrs.get("logit_bias"),
                         fitted_prior(study, trial)), task_params


def fitted_prior(study: Any, trial: Any) -> dict[str, dict] | None:
    """The label prior's weight and biases a trial's program takes, per predictor: refitted on more dev rows
    when the search refitted this trial (the study's ``prior_refit`` attribute, :func:`refit_prior`), else
    as the trial fitted them (its ``label_prior`` attribute); ``None`` for a trial without the prior."""
    refit = study.user_attrs.get("prior_refit") or {}
    if refit.get("trial") == trial.number:
        return refit["label_prior"]
    return trial.user_attrs.get("label_prior")


def refit_prior(study: Any, trial: Any, task: Any, pool: dict, rows: list, context: Context) -> dict | None:
    """Refit the label prior of ``trial`` (the search's choice) on its dev rows and ``rows`` more (the search's
    sample continued): the label probabilities of the new rows (one metered call each, until the budget is spent), then the
    weight and biases :func:`autoprompt.optimizers.optuna._prior.fit_prior` finds on all of them. Stored as the
    study's ``prior_refit`` attribute (the trial, its rows, the values, the cross-fitted score over all rows,
    the calls it made), which :func:`fitted_prior` hands to the program; a resumed search keeps it. ``None``
    (and nothing stored) when the trial takes no prior, no row was read, or nothing is left to read."""
    import numpy as np

    stored = trial.user_attrs.get("prior_rows")
    if not rows or not stored or not trial.user_attrs.get("label_prior"):
        return None
    done = study.user_attrs.get("prior_refit")
    if done and done.get("trial") == trial.number:
        return done
    program = build_program(task, pool, trial.params, trial.user_attrs.get("task_params", {}))
    name, predictor = next((n, p) for n, p in program.named_predictors() if prior_of(p) is not None)
    prior = prior_of(predictor)
    meter = context.meter.child()
    new = []
    try:
        for example in rows:
            if context.meter.exhausted() is not None:
                break
            with dspy.context(usage_tracker=meter):
                new.append(prior_rows(predictor, prior, task, example))
    except BudgetExhausted:
        pass
    if not new:
        logger.info("no LM calls left to refit trial %d's label prior; it keeps its own fit", trial.number)
        return None
    logp, shares, scores = (np.concatenate([np.asarray(stored[key], dtype=float), [row[i] for row in new]])
                            for i, key in enumerate(("logp", "shares", "scores")))
    weight, bias, fit_score = fit_prior(logp, shares, scores)
    refit = {"trial": trial.number, "rows": len(scores), "new_rows": len(new), "lm_calls": meter.calls,
             "label_prior": {name: {"weight": weight,
                                    "bias": {label: float(b) for label, b in zip(prior.choices, bias) if b}}},
             "cross_fitted": float(cross_fitted(logp, shares, scores).mean()), "fit_score": fit_score}
    study.set_user_attr("prior_refit", refit)
    logger.info("trial %d's label prior refitted on %d dev rows (%d new, %d LM calls): weight %s, bias %s; "
                "cross-fitted %.3f (the trial's own %d rows: %.3f)", trial.number, len(scores), len(new), meter.calls,
                weight, refit["label_prior"][name]["bias"], refit["cross_fitted"], len(scores) - len(new), trial.value)
    return refit


def start_params(pool: dict, *, max_demos: int) -> dict[str, Any]:
    """The search's first trial: per predictor its own instruction with per-input (retrieved) demos,
    uncalibrated, when the pool offers retrieval (ordered by vote, as many as the pool's ``warm_start``
    chose, when the pool offers that order; else ``min(4, max_demos)`` by similarity); else the parameters
    are left to the sampler. The configuration the moves benchmark found best on all three shipped tasks, each move
    measured alone (``benchmarks/results/search_moves.md``, dev: SST-2 55.5 -> 74.5% with 8 demos by vote (70.0
    with 4 by similarity), Banking77 11.7 -> 84.4% with 8 by vote (80.5), Iris 30 -> 74% with 4, which its vote
    picks): at a small budget the search starts from it instead of meeting it by chance."""
    params: dict[str, Any] = {}
    for name, cands in pool["predictors"].items():
        if not cands.get("retrieval") or max_demos <= 0:
            continue
        warm = cands.get("warm_start") or {}
        params.update({f"{name}.instruction": 0, f"{name}.n_demos": min(warm.get("n_demos", 4), max_demos),
                       f"{name}.retrieve": True})
        if len(cands.get("demo_orders", ())) > 1:
            params[f"{name}.demo_order"] = warm.get("demo_order", cands["demo_orders"][0])
        if cands.get("calibrate"):
            params[f"{name}.calibrate"] = 0.0
        if cands.get("label_prior"):
            params[f"{name}.prior"] = False
    return params


def prior_start_params(pool: dict, *, max_demos: int) -> dict[str, Any]:
    """The search's second trial when the pool offers the label prior: per predictor its own instruction, the
    first labelled demo set's first ``min(4, max_demos)`` demos (balanced over the labels) and the prior (its
    weight and bias fitted by the trial). The configuration the vote-prior benchmark measured best on SST-2:
    78.7-80.7% test over three demo seeds (``benchmarks/results/vote_prior.md``); ``{}`` when not offered."""
    params: dict[str, Any] = {}
    for name, cands in pool["predictors"].items():
        if not cands.get("label_prior"):
            continue
        params[f"{name}.instruction"] = 0
        params[f"{name}.prior"] = True
        if cands["demo_sets"] and max_demos > 0:  # (beside the prior a trial takes no per-input demos)
            params[f"{name}.n_demos"] = min(4, max_demos)
            params[f"{name}.demo_set"] = 0
    return params


def suggest(trial: Any, task: Any, pool: dict, *, max_demos: int, temperatures: tuple[float, ...]
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sample a trial's parameters: per predictor an instruction, the label prior or a calibration (when the
    pool offers them), fixed or retrieved demos (when the pool holds a retrieval pool; fixed only beside the
    prior), a demo set and a number of demos, the temperature (when several are searched) and the task's own
    ``search_space``."""
    params: dict[str, Any] = {}
    for name, cands in pool["predictors"].items():
        params[f"{name}.instruction"] = trial.suggest_categorical(
            f"{name}.instruction", list(range(len(cands["instructions"])))
        )
        prior = False
        if cands.get("label_prior"):  # the trial fits its bias: no content-free calibration beside it
            prior = params[f"{name}.prior"] = trial.suggest_categorical(f"{name}.prior", [False, True])
        # with the prior, fixed demos only: the prior is the neighbours' vote, and per-input demos already make
        # the model copy it, so the two would count the same evidence twice (SST-2 dev, vote_prior.md: the
        # rule over 8 retrieved demos 79.5% against 81.5-86.0 over 4 fixed ones; test 75.9 against 78.7-80.7)
        retrieval = bool(cands.get("retrieval")) and not prior
        if cands.get("calibrate") and not prior:
            params[f"{name}.calibrate"] = trial.suggest_categorical(f"{name}.calibrate", list(CALIBRATION_STRENGTHS))
        if (cands["demo_sets"] or retrieval) and max_demos > 0:
            # conditional: where the demos come from is sampled only for a trial that takes some, and a
            # retrieving trial samples no demo set
            n_demos = params[f"{name}.n_demos"] = trial.suggest_int(f"{name}.n_demos", 0, max_demos)
            retrieve = False
            if retrieval and n_demos > 0:  # per-input demos
                retrieve = trial.suggest_categorical(f"{name}.retrieve", [False, True] if cands["demo_sets"] else [True])
                params[f"{name}.retrieve"] = retrieve
            if retrieve and len(cands.get("demo_orders", ())) > 1:
                params[f"{name}.demo_order"] = trial.suggest_categorical(f"{name}.demo_order", cands["demo_orders"])
            if n_demos > 0 and not retrieve:
                params[f"{name}.demo_set"] = trial.suggest_categorical(
                    f"{name}.demo_set", list(range(len(cands["demo_sets"])))
                )
    if len(temperatures) > 1:
        params["temperature"] = trial.suggest_categorical("temperature", list(temperatures))
    task_params = task.search_space(trial) if task.search_space is not None else {}
    trial.set_user_attr("task_params", task_params)
    return params, task_params


def run_trial(trial: Any, task: Any, pool: dict, devset: list, steps: list[int], context: Context, *,
              max_demos: int, temperatures: tuple[float, ...], multi_objective: bool, per_example: bool) -> Any:
    """Score one trial's program on growing minibatches of ``devset`` (reporting each to the pruner), record
    what it cost in the trial's user attributes, and return its score (and prompt tokens when multi-objective).
    A trial that takes the label prior is scored by :func:`_run_prior_trial`, on the same rows and steps."""
    import optuna

    params, task_params = suggest(trial, task, pool, max_demos=max_demos, temperatures=temperatures)
    original = duplicate_of(trial, pool)
    if original is not None:
        return _repeat(trial, original, multi_objective=multi_objective)
    meter = context.meter.child()  # this trial's calls only, also when trials run at once (jobs > 1)
    started = time.monotonic()
    program = build_program(task, pool, params, task_params)
    priored = [(name, p) for name, p in program.named_predictors() if prior_of(p) is not None]
    if priored:
        return _run_prior_trial(trial, task, program, priored[0], devset, steps, meter, started,
                                multi_objective=multi_objective, per_example=per_example)
    try:
        with dspy.context(usage_tracker=meter):
            logit_bias = _calibrate(program, params, task)
    except BudgetExhausted as exc:
        logger.info("trial %d stopped while calibrating: %s", trial.number, exc)
        trial.set_user_attr("budget_exhausted", True)
        trial.study.stop()
        raise optuna.TrialPruned() from exc
    if logit_bias:
        trial.set_user_attr("logit_bias", logit_bias)
        program = with_logit_bias(program, logit_bias)
    total = 0.0
    done = 0
    failures = errors = 0
    pruned = False
    boundaries = set(steps)
    try:
        for i, example in enumerate(devset):
            with dspy.context(usage_tracker=meter):
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
            if multi_objective:
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
        pruned = _budget_spent(trial, exc)
    prompt_tokens = _record(trial, program, task, devset, meter, started, examples=done, failures=failures,
                            errors=errors, score=total / done if done else 0.0)
    if errors >= MAX_LEADING_ERRORS and errors > MAX_ERROR_SHARE * done:
        raise LMError(f"the LM failed on {errors} of {done} dev examples of trial {trial.number} (more than "
                      f"{MAX_ERROR_SHARE:.0%}); its score would measure the server: check the LM, then --resume")
    if pruned:
        raise optuna.TrialPruned()
    score = total / done
    return (score, prompt_tokens) if multi_objective else score


#: what a trial repeating an earlier one's program copies from it: its score's record and what its program took
_REPEATED_ATTRS = ("logit_bias", "label_prior", "label_prior_fit_score", "examples", "failures", "lm_errors",
                   "prompt_tokens", "score_so_far")


def duplicate_of(trial: Any, pool: dict | None = None) -> Any | None:
    """The earliest finished trial of the study whose program is ``trial``'s: the same parameters (autoprompt's
    and the task's ``search_space``; with ``pool``, a fixed demo set's ``n_demos`` counted up to the set's size,
    so 8 demos of a set of 6 are its 6), or ``None``. A trial the budget cut short is no match (it was not
    judged), nor is any trial sampled at a temperature above 0 (its answers may differ when the LM cache is
    off). Optuna's samplers propose such repeats (TPE the more, the narrower its search: optuna#2021); at
    temperature 0 the same program on the same rows answers the same, so the search does not read them again."""
    import optuna

    if trial.params.get("temperature"):
        return None
    key = _program_key(trial.params, pool)
    task_params = trial.user_attrs.get("task_params", {})
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for other in trial.study.get_trials(deepcopy=False, states=finished):
        if (other.number != trial.number and _program_key(other.params, pool) == key
                and other.user_attrs.get("task_params", {}) == task_params
                and not other.user_attrs.get("budget_exhausted")):
            return other
    return None


def _program_key(params: dict[str, Any], pool: dict | None) -> dict[str, Any]:
    """``params`` with each fixed demo set's ``n_demos`` cut to the set's size (what :func:`build_program` takes)."""
    key = dict(params)
    for name, cands in (pool or {}).get("predictors", {}).items():
        n_demos = key.get(f"{name}.n_demos")
        if n_demos and not key.get(f"{name}.retrieve") and cands.get("demo_sets"):
            key[f"{name}.n_demos"] = min(n_demos, len(cands["demo_sets"][key.get(f"{name}.demo_set", 0)]))
    return key


def _repeat(trial: Any, original: Any, *, multi_objective: bool) -> Any:
    """A trial with an earlier one's program: its record copied (``duplicate_of`` set, no LM call), and its
    outcome too: the same score, or pruned again after the same intermediate values."""
    import optuna

    for key in _REPEATED_ATTRS:
        if key in original.user_attrs:
            trial.set_user_attr(key, original.user_attrs[key])
    for key in ("lm_calls", "tokens", "seconds"):
        trial.set_user_attr(key, 0)
    trial.set_user_attr("duplicate_of", original.number)
    logger.info("trial %d has trial %d's program: its outcome repeated, no LM call", trial.number, original.number)
    if original.state == optuna.trial.TrialState.PRUNED:
        for step, value in sorted(original.intermediate_values.items()):
            trial.report(value, step=step)
        raise optuna.TrialPruned()
    return tuple(original.values) if multi_objective else original.value


def _run_prior_trial(trial: Any, task: Any, program: dspy.Module, named: tuple[str, Any], devset: list,
                     steps: list[int], meter: Any, started: float, *, multi_objective: bool, per_example: bool) -> Any:
    """Score a trial that adds the label prior (:mod:`autoprompt.optimizers.optuna._prior`): per dev row (the
    rows every trial reads) the label probabilities (one metered call), at each minibatch the cross-fitted
    score so far reported to the pruner; at the end the prior's weight and biases fitted on all rows go to the trial's ``label_prior`` user
    attribute, and its cross-fitted score is the trial's value."""
    import numpy as np
    import optuna

    name, predictor = named
    prior = prior_of(predictor)
    logp, shares, scores = [], [], []
    missing = 0
    pruned = False
    boundaries = set(steps)
    so_far = np.zeros(0)  # the cross-fitted scores at the last boundary
    try:
        for i, example in enumerate(devset):
            with dspy.context(usage_tracker=meter):
                row = prior_rows(predictor, prior, task, example)
            logp.append(row[0])
            shares.append(row[1])
            scores.append(row[2])
            missing += row[3]
            done = i + 1
            if multi_objective or done not in boundaries:
                continue
            so_far = cross_fitted(np.asarray(logp), np.asarray(shares), np.asarray(scores))
            if per_example:  # WilcoxonPruner compares trials example by example
                for step in range(max((s for s in steps if s < done), default=0), done):
                    trial.report(float(so_far[step]), step=step)
            else:
                trial.report(float(so_far.mean()), step=done)
            if done < len(devset) and trial.should_prune():
                pruned = True
                break
    except BudgetExhausted as exc:
        pruned = _budget_spent(trial, exc)
    done = len(scores)
    value = 0.0
    if done:
        arrays = np.asarray(logp), np.asarray(shares), np.asarray(scores)
        value = float((so_far if len(so_far) == done else cross_fitted(*arrays)).mean())
        if not pruned:
            weight, bias, fitted_score = fit_prior(*arrays)
            trial.set_user_attr("label_prior", {name: {"weight": weight, "bias": {
                label: float(b) for label, b in zip(prior.choices, bias) if b}}})
            trial.set_user_attr("label_prior_fit_score", fitted_score)
            # the rows themselves, so that the search can refit the winner on more rows without reading these again
            trial.set_user_attr("prior_rows", {key: array.tolist()
                                               for key, array in zip(("logp", "shares", "scores"), arrays)})
    prompt_tokens = _record(trial, program, task, devset, meter, started, examples=done, failures=missing,
                            errors=0, score=value)
    if pruned:
        raise optuna.TrialPruned()
    return (value, prompt_tokens) if multi_objective else value


def _budget_spent(trial: Any, exc: BudgetExhausted) -> bool:
    """A trial the budget stopped: logged, marked, and the study told to stop (its score so far kept)."""
    logger.info("trial %d stopped: %s", trial.number, exc)
    trial.set_user_attr("budget_exhausted", True)
    trial.study.stop()
    return True


def _record(trial: Any, program: dspy.Module, task: Any, devset: list, meter: Any, started: float, *,
            examples: int, failures: int, errors: int, score: float) -> int:
    """Write what a trial cost and scored so far to its user attributes; its prompt tokens."""
    prompt_tokens = _prompt_tokens(program, task, devset[0])
    trial.set_user_attr("lm_calls", meter.calls)
    trial.set_user_attr("tokens", meter.tokens)
    trial.set_user_attr("seconds", round(time.monotonic() - started, 3))
    trial.set_user_attr("examples", examples)
    trial.set_user_attr("failures", failures)
    trial.set_user_attr("lm_errors", errors)
    trial.set_user_attr("prompt_tokens", prompt_tokens)
    trial.set_user_attr("score_so_far", score)
    return prompt_tokens


def _calibrate(program: dspy.Module, params: dict[str, Any], task: Any) -> dict[str, dict]:
    """The calibrating logit bias of each predictor whose ``calibrate`` parameter (a strength) is not 0 (LM
    calls, metered)."""
    return calibrate_program(program, task, {name: float(params.get(f"{name}.calibrate") or 0.0)
                                             for name, _ in program.named_predictors()})


def _prompt_tokens(program: dspy.Module, task: Any, example: dspy.Example) -> int:
    """Tokens of the prompt the program sends for one example (all predictors, chars/4 estimate)."""
    adapter = dspy.settings.adapter or CompactJSONAdapter()
    chars = 0
    for _, predictor in program.named_predictors():
        inputs = {k: example[k] for k in predictor.signature.input_fields if k in example}
        messages = adapter.format(predictor.signature, demos_for(predictor, inputs), inputs)
        chars += sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 4
