"""The search's label-prior move (autoprompt.optimizers.optuna._prior, autoprompt._vote_prior): the fit and its
cross-fitted score (pure logic), and on the embedded model the trial that fits it, the program it stands for
(whose greedy answers are the fitted rule's), the prompt file and the exports that carry it."""

from __future__ import annotations

import json

import dspy
import numpy as np
import optuna
import pytest

import autoprompt
from autoprompt._vote_prior import prior_of
from autoprompt.export import export_prompt, prompt_document
from autoprompt.optimizers.optuna._prior import PRIOR_WEIGHTS, cross_fitted, fit_prior, prior_rows, refit_reserve
from autoprompt.optimizers.optuna._study import select_trial
from autoprompt.optimizers.optuna._trial import refit_prior


def test_the_cross_fitted_score_is_honest_where_the_fit_is_optimistic():
    fitted, honest = [], []
    for seed in range(20):  # labels that nothing predicts: the fit finds patterns in noise, the cross-fit not
        rng = np.random.default_rng(seed)
        logp, shares = np.log(rng.dirichlet([1, 1], size=60)), rng.normal(size=(60, 2))
        noise = np.eye(2)[rng.integers(0, 2, size=60)]
        fitted.append(fit_prior(logp, shares, noise)[2])
        honest.append(cross_fitted(logp, shares, noise).mean())
    assert min(fitted) > 0.5 and np.mean(fitted) - np.mean(honest) > 0.08 and abs(np.mean(honest) - 0.5) < 0.06
    # labels the prior predicts: the fit puts weight on it and the cross-fitted score stays high
    truth = np.eye(2)[(shares[:, 1] > shares[:, 0]).astype(int)]
    w, _, fitted = fit_prior(logp, shares, truth)
    assert w == max(PRIOR_WEIGHTS) and fitted > 0.9 and cross_fitted(logp, shares, truth).mean() > 0.85


def test_a_rows_cross_fitted_answer_never_sees_its_own_label():
    rng = np.random.default_rng(0)
    logp, shares = np.log(rng.dirichlet([1, 1], size=40)), rng.normal(size=(40, 2))
    gold = np.eye(2)[rng.integers(0, 2, size=40)]
    before = cross_fitted(logp, shares, gold)
    for row in (0, 7, 39):  # flip one row's gold label: its answer (hence its score flips with it) and the
        flipped = gold.copy()  # answers of the rows in its fold (fitted on the same other folds) stay
        flipped[row] = 1 - flipped[row]
        after = cross_fitted(logp, shares, flipped)
        fold = np.arange(40) % 10 == row % 10
        assert after[row] == 1 - before[row]
        assert np.array_equal(after[fold & (np.arange(40) != row)], before[fold & (np.arange(40) != row)])


def test_beside_the_prior_a_trial_takes_fixed_demos_only():
    """Pure logic (Optuna's sampler, no LM): the prior and per-input demos never meet in a trial's parameters;
    each is still sampled on its own, and a pool without labelled demo sets leaves a prior trial zero-shot."""
    from types import SimpleNamespace

    from autoprompt.optimizers.optuna._trial import suggest

    task = SimpleNamespace(search_space=None)
    entry = {"instructions": ["a", "b"], "demo_sets": [[{"text": "x", "label": "positive"}]] * 2,
             "retrieval": [{"text": "x", "label": "positive"}], "label_prior": {"choices": [], "token_ids": []}}
    for demo_sets, combos in (([[{}]] * 2, {(True, False), (False, True), (False, False)}), ([], {(True, None)})):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        seen = set()
        for _ in range(200):
            trial = study.ask()
            params, _ = suggest(trial, task, {"predictors": {"self": {**entry, "demo_sets": demo_sets}}},
                                max_demos=4, temperatures=(0.0,))
            if params["self.prior"] and not demo_sets:
                assert "self.n_demos" not in params and "self.retrieve" not in params
                seen.add((True, None))
            elif params.get("self.n_demos"):
                seen.add((params["self.prior"], params.get("self.retrieve", False)))
            study.tell(trial, 0.5)
        assert (True, True) not in seen and combos <= seen


def test_the_prior_is_not_offered_on_an_lm_without_token_ids(small_task, tmp_path):
    """Pure logic, a stub LM (DSPy's DummyLM): no engine, so no prior in the pool and no trial samples it."""
    from dspy.utils.dummies import DummyLM

    stub = DummyLM([{"label": "positive"}] * 200, adapter=dspy.JSONAdapter())
    result = autoprompt.optimize(small_task, lm=stub, run_dir=tmp_path / "run", dev_limit=3, progress=False,
                                 optimizer="optuna", n_trials=2, n_instructions=0, n_demo_sets=1, max_demos=1,
                                 minibatches=(3,), pruner="none", label_prior=True)
    assert "label_prior" not in result.study.user_attrs["pool"]["predictors"]["self"]
    assert all("self.prior" not in t.params for t in result.study.trials)


def test_the_search_fits_the_prior_and_the_program_answers_by_the_fitted_rule(lm, small_task, tmp_path):
    from autoprompt.optimizers.optuna import program_of_trial

    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=8, progress=False,
                                 optimizer="optuna", n_trials=3, n_instructions=0, n_demo_sets=2, max_demos=2,
                                 minibatches=(4,), max_dev=6, pruner="none",  # label_prior: on by default
                                 prior_refit=0)  # the trial's own fit (the refit: the tests below)
    pool = result.study.user_attrs["pool"]["predictors"]["self"]
    engine = autoprompt._calibration.local_engine(lm)
    assert pool["label_prior"] == {"choices": ["positive", "negative"],
                                   "token_ids": engine.first_tokens(["positive", "negative"])}
    trials = result.study.trials
    # trial 0: the warm start (retrieved demos, no prior); trial 1: 2 fixed labelled demos and the prior
    assert trials[0].params["self.prior"] is False and trials[0].params["self.retrieve"] is True
    prior_trial = trials[1]
    assert prior_trial.state == optuna.trial.TrialState.COMPLETE
    assert prior_trial.params == {"self.instruction": 0, "self.prior": True, "self.n_demos": 2, "self.demo_set": 0}
    # beside the prior no trial takes per-input demos (they would count the neighbours' vote twice)
    assert not any(t.params.get("self.prior") and t.params.get("self.retrieve") for t in trials)
    fitted = prior_trial.user_attrs["label_prior"]["self"]
    assert fitted["weight"] in PRIOR_WEIGHTS and set(fitted["bias"]) <= {"negative"}
    # it read the rows every trial reads (max_dev of the 8), one call each
    assert prior_trial.user_attrs["examples"] == trials[0].user_attrs["examples"] == 6
    assert prior_trial.user_attrs["lm_calls"] <= 6

    program, _ = program_of_trial(result.study, small_task, prior_trial.number)
    (predictor,) = program.predictors()
    prior = prior_of(predictor)
    assert prior.weight == fitted["weight"] and prior.bias == fitted["bias"] and prior.k == 64
    # the program's greedy answers are the fitted rule's: argmax(log p + weight * log share + bias)
    rows = list(small_task.examples("dev"))[:8]
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        answered = [predictor(text=ex.text).label for ex in rows]
        arithmetic = []
        for ex in rows:
            logp, shares, _, _ = prior_rows(predictor, prior, small_task, ex)
            bias = np.asarray([prior.bias.get(c, 0.0) for c in prior.choices])
            arithmetic.append(prior.choices[int(np.argmax(logp + prior.weight * shares + bias))])
    assert answered == arithmetic
    assert prior_trial.value == pytest.approx(prior_trial.user_attrs["score_so_far"])

    # the prompt file carries the prior (format_version 4) and loads back to the same per-call bias
    document = prompt_document(program, task=small_task)
    assert document["format_version"] == 4
    spec = document["predictors"][0]["label_prior"]
    assert spec["weight"] == fitted["weight"] and spec["k"] == 64 and len(spec["pool"]) == 40
    reloaded = prior_of(autoprompt.load_prompt(json.loads(json.dumps(document)), small_task).predictors()[0])
    assert all(reloaded({"text": ex.text}) == prior({"text": ex.text}) for ex in rows)
    entry = json.loads(export_prompt(document, tmp_path / "m.json", format="messages").read_text())["predictors"][0]
    assert entry["logit_bias_per_input"]["token_ids"] == pool["label_prior"]["token_ids"]
    assert "ln((n_l + 0.5)" in entry["logit_bias_per_input"]["rule"]
    text = export_prompt(document, tmp_path / "p.txt", format="text").read_text()
    assert "prior from its 64 nearest labelled examples" in text


def _prior_search(**options):
    from autoprompt.optimizers import OptunaSearch

    # no retrieval: the prior's enqueued trial (2 fixed labelled demos) is the first; one labelled set, no
    # instruction proposals: building the pool costs no LM call
    return OptunaSearch(n_instructions=0, n_demo_sets=1, max_demos=2, minibatches=(3,), max_dev=6,
                        retrieved_demos=False, calibrate=False, pruner="none", **options)


def _context(task, tmp_path, budget=None):
    from autoprompt.optimizers import Context
    from autoprompt.usage import Meter

    return Context(trainset=task.examples("train"), devset=task.examples("dev")[:12], seed=0, run_dir=tmp_path,
                   meter=Meter(budget), progress=False)


def _compile(search, task, context, lm, instruction):
    program = task.make_program()  # a new instruction: none of its answers is in DSPy's cache yet
    program.predictors()[0].signature = program.predictors()[0].signature.with_instructions(instruction)
    context.meter.enforcing = True
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter(), usage_tracker=context.meter):
        return search, search.compile(program, task, context)


def test_the_winning_prior_trial_is_refitted_on_the_next_dev_rows(lm, small_task, tmp_path):
    """The best trial takes the prior (the only trial): the search reads its label probabilities on the next
    ``prior_refit`` rows of its dev sample, fits the weight and bias on all 10 rows, and the program (and the
    trial's program rebuilt from the study, as export and report do) takes those values."""
    from autoprompt.optimizers.optuna import program_of_trial

    context = _context(small_task, tmp_path)
    search, compiled = _compile(_prior_search(n_trials=1, prior_refit=4), small_task, context, lm,
                                "Is the review positive or negative? (refit test)")
    study = search.study_
    (trial,) = study.trials
    assert trial.params["self.prior"] is True and trial.user_attrs["examples"] == 6
    refit = study.user_attrs["prior_refit"]
    assert refit["trial"] == 0 and refit["rows"] == 10 and refit["new_rows"] == 4 and refit["lm_calls"] == 4

    # the values are fit_prior's on the trial's 6 rows and the 4 that follow them in the search's sample
    (predictor,) = compiled.predictors()
    prior = prior_of(predictor)
    seen, following = search._dev_rows(context)
    assert len(seen) == 6 and len(following) == 4 and not {id(e) for e in seen} & {id(e) for e in following}
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        new = [prior_rows(predictor, prior, small_task, ex) for ex in following]
    stored = trial.user_attrs["prior_rows"]
    arrays = [np.concatenate([np.asarray(stored[key]), [row[i] for row in new]])
              for i, key in enumerate(("logp", "shares", "scores"))]
    weight, bias, fit_score = fit_prior(*arrays)
    expected = {"weight": weight, "bias": {c: float(b) for c, b in zip(prior.choices, bias) if b}}
    assert refit["label_prior"] == {"self": expected} and refit["fit_score"] == fit_score
    assert refit["cross_fitted"] == pytest.approx(cross_fitted(*arrays).mean())
    assert (prior.weight, prior.bias) == (expected["weight"], expected["bias"])
    rebuilt = prior_of(program_of_trial(study, small_task, 0)[0].predictors()[0])
    assert (rebuilt.weight, rebuilt.bias) == (expected["weight"], expected["bias"])
    # the trial keeps its own fit (on its 6 rows) beside the refit
    own_weight, own_bias, _ = fit_prior(*(np.asarray(stored[key]) for key in ("logp", "shares", "scores")))
    assert trial.user_attrs["label_prior"]["self"] == {
        "weight": own_weight, "bias": {c: float(b) for c, b in zip(prior.choices, own_bias) if b}}


def test_under_a_call_cap_the_trials_leave_the_refit_its_calls(lm, small_task, tmp_path):
    """Cap 40, 6 calls a trial, a refit of 4 rows: the trials stop at 36 calls (the cap still buys 4 trials
    beside the refit), the cap is whole again after them, and the refit (if the prior trial won) stays within
    it."""
    from autoprompt.usage import Budget

    search = _prior_search(n_trials=30, prior_refit=4, temperatures=(0.0, 0.7))  # configurations enough to reach it
    context = _context(small_task, tmp_path, Budget(max_calls=40))
    program = small_task.make_program()
    program.predictors()[0].signature = program.predictors()[0].signature.with_instructions(
        "Is the review positive or negative? (reserve test)")
    context.meter.enforcing = True
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter(), usage_tracker=context.meter):
        study = search.run_trials(program, small_task, context, refit=True)
        assert 30 < context.meter.calls <= 36 and context.meter.budget.max_calls == 40
        chosen = select_trial([t for t in study.trials if t.state.name == "COMPLETE"])
        refit = refit_prior(study, chosen, small_task, search.pool_, search._dev_rows(context)[1], context)
    assert context.meter.calls <= 40
    if refit is not None:  # the chosen trial took the prior: it read the 4 rows the trials left
        assert refit["new_rows"] == 4 and refit["lm_calls"] == 4
    else:
        assert not chosen.params.get("self.prior")
    # a cap that no longer buys 4 trials of 6 calls beside the refit's 4 holds nothing back
    assert refit_reserve(40, 0, 4, 6) == 4 and refit_reserve(40, 13, 4, 6) == 0


def test_holding_back_calls_lowers_the_cap_for_a_block_only():
    from autoprompt.usage import Budget, Meter

    meter = Meter(Budget(max_calls=10, max_tokens=99))
    with meter.holding_back(4):
        assert meter.budget == Budget(max_calls=6, max_tokens=99)
        meter.calls = 6
        assert meter.exhausted() == "6 LM calls (cap 6)"
    assert meter.budget == Budget(max_calls=10, max_tokens=99) and meter.exhausted() is None
    with meter.holding_back(0), Meter().holding_back(5):  # nothing to hold back: the budget is left as it is
        assert meter.budget.max_calls == 10
    with pytest.raises(ValueError, match="cannot hold back 10 of 10"):
        with meter.holding_back(10):
            pass
