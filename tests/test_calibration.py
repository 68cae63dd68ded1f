"""Contextual calibration of the label choice (autoprompt._calibration) on the embedded model: the bias it
measures, the answers it changes, the same answers without DSPy from the exported messages, and the search
parameter that carries it to the prompt file."""

from __future__ import annotations

import json

import dspy
import optuna
import pytest

import autoprompt
from autoprompt._calibration import label_bias, local_engine
from autoprompt.evaluate import evaluate_program
from autoprompt.export import export_prompt, prompt_document
from autoprompt.lms import LlamaCppEngine
from autoprompt.usage import Meter


def test_label_bias_is_measured_metered_and_changes_the_choice(lm, small_task, tmp_path):
    program = small_task.make_program()
    (predictor,) = program.predictors()
    engine = local_engine(lm)
    ids = engine.first_tokens(["positive", "negative"])
    assert len(set(ids)) == 2
    # an uncached LM: the count must not depend on what earlier tests left in the session's cache
    meter = Meter()
    with dspy.context(lm=autoprompt.build_lm("local", cache=False), adapter=dspy.JSONAdapter(), usage_tracker=meter):
        bias = label_bias(predictor, field="label", choices=["positive", "negative"])
    assert meter.calls == 3  # one per content-free input, counted like any call
    # a caching LM keeps the probes in DSPy's cache: asked again, the same bias costs no call
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        label_bias(predictor, field="label", choices=["positive", "negative"])
    meter = Meter()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), usage_tracker=meter):
        assert label_bias(predictor, field="label", choices=["positive", "negative"]) == bias
    assert meter.calls == 0
    assert sorted(bias) == sorted(str(i) for i in ids)
    assert sum(bias.values()) == pytest.approx(0.0, abs=1e-3)  # centred: only the difference matters
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        half = label_bias(predictor, field="label", choices=["positive", "negative"], strength=0.5)
    assert half == {k: pytest.approx(v / 2, abs=1e-3) for k, v in bias.items()}
    # not offered where it cannot be measured: another LM, labels that share a first token
    assert label_bias(predictor, field="label", choices=["positive", "negative"], lm=dspy.LM("openai/gpt-4o-mini")) is None
    assert label_bias(predictor, field="label", choices=["card_arrival", "card_linking"], lm=lm) is None

    calibrated = small_task.make_program()
    calibrated.predictors()[0].config = {"logit_bias": bias}
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        before = evaluate_program(program, small_task, "dev", progress=False)
        after = evaluate_program(calibrated, small_task, "dev", progress=False)
    favoured = "positive" if bias[str(ids[0])] < 0 else "negative"  # the label the bias holds back
    said = lambda e: sum(r["predicted"] == favoured for r in e.records)  # noqa: E731
    assert said(after) < said(before)

    # the exported messages with the exported logit_bias, sent without DSPy, get the same answers
    document = prompt_document(calibrated, task=small_task)
    assert document["predictors"][0]["config"]["logit_bias"] == bias
    entry = json.loads(export_prompt(document, tmp_path / "m.json", format="messages").read_text())["predictors"][0]
    assert entry["generation"]["logit_bias"] == bias
    schema = entry["response_format"]["json_schema"]["schema"]
    raw_engine = LlamaCppEngine()
    for record, example in zip(after.records[:6], small_task.examples("dev")[:6]):
        messages = [{"role": m["role"], "content": m["content"].replace("{{text}}", example.text)}
                    for m in entry["messages"]]
        raw = raw_engine.chat(messages, response_format={"type": "json_object", "schema": schema}, max_tokens=128,
                              logit_bias={int(k): v for k, v in entry["generation"]["logit_bias"].items()})
        assert json.loads(raw["choices"][0]["message"]["content"])["label"] == record["predicted"]
    reloaded = autoprompt.load_prompt(document, small_task)
    assert reloaded.predictors()[0].config["logit_bias"] == bias


def test_the_search_calibrates_the_trials_that_ask_and_exports_it(lm, small_task, tmp_path):
    from autoprompt.optimizers.optuna import program_of_trial

    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=4, progress=False,
                                 optimizer="optuna", n_trials=6, n_instructions=0, n_demo_sets=1, max_demos=1,
                                 minibatches=(4,), pruner="none", calibrate=True, label_prior=False)
    pool = result.study.user_attrs["pool"]["predictors"]["self"]  # (the prior, on by default, fits its own bias)
    assert pool["calibrate"] is True
    trials = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    strengths = {t.params["self.calibrate"] for t in trials}
    assert strengths <= {0.0, 0.5} and strengths - {0.0}
    for trial in trials:
        assert ("logit_bias" in trial.user_attrs) == (trial.params["self.calibrate"] > 0)
        program, _ = program_of_trial(result.study, small_task, trial.number)
        config = program.predictors()[0].config
        assert config.get("logit_bias") == trial.user_attrs.get("logit_bias", {}).get("self")
    calibrated = [t for t in trials if t.params["self.calibrate"] > 0]
    uncalibrated = [t for t in trials if t.params["self.calibrate"] == 0]
    # 3 probe calls on top of the 4 dev examples (either cached when an earlier trial sent the same request)
    assert all(t.user_attrs["lm_calls"] <= 7 for t in calibrated)
    assert calibrated[0].user_attrs["lm_calls"] >= 3  # the first calibration of the run cannot be cached
    assert all(t.user_attrs["lm_calls"] <= 4 for t in uncalibrated)
    document = json.loads((result.run_dir / "prompt.json").read_text())
    best = result.study.trials[result.optimizer.best_trial_]  # the trial the search chose
    assert document["predictors"][0]["config"].get("logit_bias") == best.user_attrs.get("logit_bias", {}).get("self")


def test_calibration_is_not_offered_on_an_lm_without_token_ids(small_task, tmp_path):
    """Pure logic, a stub LM (DSPy's DummyLM): no engine to read probabilities or token ids from, so the pool
    says so and no trial samples the parameter."""
    from dspy.utils.dummies import DummyLM

    stub = DummyLM([{"label": "positive"}] * 200, adapter=dspy.JSONAdapter())
    result = autoprompt.optimize(small_task, lm=stub, run_dir=tmp_path / "run", dev_limit=3, progress=False,
                                 optimizer="optuna", n_trials=2, n_instructions=0, n_demo_sets=1, max_demos=1,
                                 minibatches=(3,), pruner="none", calibrate=True)
    assert result.study.user_attrs["pool"]["predictors"]["self"]["calibrate"] is False
    assert all("self.calibrate" not in t.params for t in result.study.trials)
