"""The Optuna search: a real kill -9 of a real run and --resume; workers sharing one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from autoprompt.optimizers.optuna import stratified_sample

from ..conftest import TASKS

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
SMALL = ["--option", "n_instructions=1", "--option", "n_demo_sets=2", "--option", "max_demos=2",
         "--option", "minibatches=[3]", "--option", "pruner=\"none\"", "--dev-limit", "4", "--no-test", "--no-progress"]


def autoprompt_cmd(*args):
    return [sys.executable, "-m", "autoprompt", *map(str, args)]


def load(run):
    return optuna.load_study(study_name="autoprompt", storage=f"sqlite:///{run / 'study.db'}")


def finished(run):
    try:
        return [t for t in load(run).get_trials(deepcopy=False) if t.state in FINISHED]
    except (KeyError, Exception):
        return []


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "AUTOPROMPT_DATA_DIR": str(tmp_path / "none"),
            "AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")}


def test_kill_9_then_resume_loses_no_finished_trial(tmp_path, env):
    run = tmp_path / "run"
    proc = subprocess.Popen(autoprompt_cmd("optimize", TASKS / "sentiment.py", "--run-dir", run,
                                           "--option", "n_trials=8", *SMALL), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while len(finished(run)) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no trial finished in 10 minutes"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.params, t.state, t.values) for t in finished(run)}
    assert len(before) >= 2
    out = subprocess.run(autoprompt_cmd("optimize", TASKS / "sentiment.py", "--run-dir", run, "--resume",
                                        "--option", "n_trials=8", *SMALL), env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    after = {t.number: (t.params, t.state, t.values) for t in finished(run)}
    assert len(after) == 8
    for number, record in before.items():
        assert after[number] == record  # every trial finished before the kill is kept as it was
    states = [t.state for t in load(run).trials]
    assert optuna.trial.TrialState.RUNNING not in states
    document = json.loads((run / "prompt.json").read_text())  # 2 carries per-input demos, 3 ordered by vote
    retrieval = [p["retrieval"] for p in document["predictors"] if "retrieval" in p]
    assert document["format_version"] == (1 if not retrieval else 3 if any(r.get("order") == "vote"
                                                                            for r in retrieval) else 2)


def test_two_workers_share_one_study(tmp_path, env):
    run = tmp_path / "run"
    first = subprocess.run(autoprompt_cmd("optimize", TASKS / "sentiment.py", "--run-dir", run,
                                          "--option", "n_trials=2", *SMALL), env=env, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    config["optimizer"]["options"]["n_trials"] = 8  # ask the workers for 6 more trials in all
    (run / "config.json").write_text(json.dumps(config))
    worker_env = {**env, "AUTOPROMPT_LLAMA_THREADS": "1"}  # one core each
    workers = [subprocess.Popen(autoprompt_cmd("worker", run, "--worker", i, "--no-progress"), env=worker_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    trials = load(run).trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # none lost, none duplicated
    # each worker stops once 8 trials are finished; one trial in flight in the other may finish too
    assert 8 <= len([t for t in trials if t.state in FINISHED]) <= 9


def test_stratified_sample_cycles_through_labels():
    import random

    rows = [{"y": "a"}] * 10 + [{"y": "b"}] * 3 + [{"y": "c"}] * 1
    got = [r["y"] for r in stratified_sample(rows, 6, "y", random.Random(0))]
    assert len(got) == 6
    assert got.count("c") == 1 and got.count("b") == 2 and got.count("a") == 3


def test_task_extends_the_search_space(small_task, lm, tmp_path):
    """A task adds Predict-vs-ChainOfThought to the space; trials sample it and it is applied."""
    import dspy

    import autoprompt

    seen = []

    def configure(program, params):
        seen.append(params["module"])
        return dspy.ChainOfThought(small_task.signature) if params["module"] == "cot" else program

    small_task.search_space = lambda trial: {"module": trial.suggest_categorical("module", ["predict", "cot"])}
    small_task.configure = configure
    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=3, progress=False,
                                 optimizer="optuna", n_trials=4, n_instructions=0, n_demo_sets=2, max_demos=1,
                                 minibatches=(3,), pruner="none")
    modules = [t.params["module"] for t in result.study.trials]
    assert set(modules) <= {"predict", "cot"} and len(seen) >= 4
    assert all(t.user_attrs["task_params"] == {"module": t.params["module"]} for t in result.study.trials)
    winner = result.study.trials[result.optimizer.best_trial_].params["module"]  # the trial the search chose
    assert isinstance(result.program, dspy.ChainOfThought) == (winner == "cot")
    reloaded = autoprompt.load_prompt(result.run_dir / "prompt.json", small_task)
    assert type(reloaded) is type(result.program)


def test_wilcoxon_pruner_gets_one_report_per_example(small_task, lm, tmp_path):
    import autoprompt

    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=6, progress=False,
                                 optimizer="optuna", n_trials=3, n_instructions=0, n_demo_sets=2, max_demos=2,
                                 minibatches=(2, 4), pruner="wilcoxon")
    for trial in result.study.trials:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(trial.intermediate_values) == list(range(6))
            assert set(trial.intermediate_values.values()) <= {0.0, 1.0}


def test_jobs_run_trials_in_threads(small_task, lm, tmp_path):
    import autoprompt

    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=3, progress=False,
                                 optimizer="optuna", n_trials=4, jobs=2, n_instructions=0, n_demo_sets=2,
                                 max_demos=2, minibatches=(3,), pruner="none")
    trials = result.study.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.user_attrs["examples"] == 3 for t in trials)


def test_template_instructions_join_the_pool_without_an_lm(tmp_path):
    """n_templates rewordings written from the signature (no LM call: no LM is configured here) sit between
    the original instruction and the LM's proposals, with the declared choices spelled out."""
    import autoprompt
    from autoprompt.optimizers._base import Context
    from autoprompt.optimizers.optuna._pool import build_pool
    from autoprompt.usage import Meter

    task = autoprompt.load_task(str(TASKS / "sentiment.py"))
    context = Context(trainset=task.examples("train", limit=10), devset=[], seed=0, run_dir=tmp_path, meter=Meter())
    pool = build_pool(task.make_program(), task, context, max_demos=0, n_demo_sets=0, n_instructions=0, n_templates=2)
    (candidates,) = pool["predictors"].values()
    assert candidates["instructions"] == [
        "Classify the sentiment of a movie-review sentence.",
        "Classify the sentiment of a movie-review sentence. Answer with the label only.",
        "Given the text, answer with the label: positive or negative.",
    ]
    assert build_pool(task.make_program(), task, context, max_demos=0, n_demo_sets=0, n_instructions=0
                      )["predictors"]["self"]["instructions"] == candidates["instructions"][:1]


def test_the_search_returns_the_shortest_prompt_within_one_standard_error_of_the_best():
    """Pure logic: ``select="one-se"`` (the default) against ``"best"`` on scores of 100 rows (one standard error
    of 0.84: 0.037)."""
    from types import SimpleNamespace

    from autoprompt.optimizers.optuna import select_trial

    def trial(number, value, tokens, examples=100):
        return SimpleNamespace(number=number, value=value, user_attrs={"examples": examples, "prompt_tokens": tokens})

    trials = [trial(0, 0.74, 473), trial(1, 0.83, 389), trial(2, 0.53, 120), trial(3, 0.84, 467)]
    assert select_trial(trials, "best").number == 3
    assert select_trial(trials).number == 1  # 0.83 is within 0.037 of 0.84, with 78 fewer prompt tokens
    assert select_trial([*trials[:3], trial(3, 0.88, 467)]).number == 3  # 0.83 is not within 0.032 of 0.88
    # a trial scored on fewer rows (e.g. stopped by the budget) is not compared; equal prompts: the better score
    assert select_trial([*trials, trial(4, 0.84, 100, examples=50)]).number == 1
    assert select_trial([trial(0, 0.80, 300), trial(1, 0.82, 300)]).number == 1
    assert select_trial([trial(0, 0.9, 300, examples=0), trial(1, 0.8, 10, examples=0)]).number == 0
    with pytest.raises(ValueError, match="one-se"):
        select_trial(trials, "lowest")


def test_a_trial_with_an_earlier_trials_parameters_repeats_its_outcome_without_an_lm_call():
    """Pure logic on an in-memory study: a repeat of a complete trial returns its score with its record copied,
    a repeat of a pruned one is pruned after the same reports; a trial the budget cut short, or one sampled
    above temperature 0, is read again."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    from autoprompt.optimizers.optuna._trial import _repeat, duplicate_of

    dists = {"self.instruction": CategoricalDistribution([0, 1]), "self.n_demos": IntDistribution(0, 8)}
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(
        params={"self.instruction": 1, "self.n_demos": 4}, distributions=dists, value=0.83,
        user_attrs={"task_params": {}, "examples": 100, "prompt_tokens": 389, "label_prior": {"self": {"weight": 1.0}},
                    "lm_calls": 100}))
    study.add_trial(optuna.trial.create_trial(
        params={"self.instruction": 0, "self.n_demos": 2}, distributions=dists, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={20: 0.55}, user_attrs={"task_params": {}, "examples": 20}))
    study.add_trial(optuna.trial.create_trial(
        params={"self.instruction": 0, "self.n_demos": 3}, distributions=dists, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={20: 0.7}, user_attrs={"task_params": {}, "budget_exhausted": True}))

    study.enqueue_trial({"self.instruction": 1, "self.n_demos": 4})
    trial = study.ask(dists)
    trial.set_user_attr("task_params", {})
    assert duplicate_of(trial).number == 0
    assert _repeat(trial, duplicate_of(trial), multi_objective=False) == 0.83
    attrs = study.trials[trial.number].user_attrs
    assert attrs["duplicate_of"] == 0 and attrs["lm_calls"] == 0
    assert attrs["prompt_tokens"] == 389 and attrs["label_prior"] == {"self": {"weight": 1.0}}
    study.tell(trial, 0.83)

    study.enqueue_trial({"self.instruction": 0, "self.n_demos": 2})
    trial = study.ask(dists)
    trial.set_user_attr("task_params", {})
    with pytest.raises(optuna.TrialPruned):
        _repeat(trial, duplicate_of(trial), multi_objective=False)
    assert study.trials[trial.number].intermediate_values == {20: 0.55}
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    for params, task_params in (({"self.instruction": 0, "self.n_demos": 3}, {}),  # cut short by the budget
                                ({"self.instruction": 1, "self.n_demos": 4}, {"module": "cot"})):  # another task param
        study.enqueue_trial(params)
        trial = study.ask(dists)
        trial.set_user_attr("task_params", task_params)
        assert duplicate_of(trial) is None
        study.tell(trial, 0.5)
    study.enqueue_trial({"self.instruction": 1, "self.n_demos": 4, "temperature": 0.7})
    trial = study.ask({**dists, "temperature": CategoricalDistribution([0.0, 0.7])})
    trial.set_user_attr("task_params", {})
    assert duplicate_of(trial) is None
    study.tell(trial, 0.5)

    # the same program under other parameters: 6 demos of a fixed set of 3 are its 3
    pool = {"predictors": {"self": {"demo_sets": [[{}] * 8, [{}] * 3]}}}
    dists["self.demo_set"] = CategoricalDistribution([0, 1])
    study.add_trial(optuna.trial.create_trial(
        params={"self.instruction": 0, "self.n_demos": 3, "self.demo_set": 1}, distributions=dists, value=0.8,
        user_attrs={"task_params": {}}))
    for n_demos, demo_set, repeats in ((6, 1, True), (6, 0, False), (2, 1, False)):
        study.enqueue_trial({"self.instruction": 0, "self.n_demos": n_demos, "self.demo_set": demo_set})
        trial = study.ask(dists)
        trial.set_user_attr("task_params", {})
        assert (duplicate_of(trial, pool) is not None) == repeats, (n_demos, demo_set)
        assert duplicate_of(trial) is None  # without the pool: parameters only
        study.tell(trial, 0.5)


def test_under_a_budget_the_search_runs_until_the_sampler_only_repeats(small_task, lm, tmp_path, caplog):
    """n_trials unset and a budget: the trials are not capped at 16; on a space of one configuration (one
    instruction, no demos, no prior) the first trial reads the dev rows and the next ten repeat it, without an LM
    call, and the search stops there rather than looping on free repeats (and the report marks them)."""
    import logging

    import autoprompt

    caplog.set_level(logging.INFO, logger="autoprompt")
    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=3, progress=False, budget=500,
                                 optimizer="optuna", n_instructions=0, n_demo_sets=0, max_demos=0,
                                 retrieved_demos=False, calibrate=False, label_prior=False, minibatches=(3,))
    trials = result.study.trials
    assert len(trials) == 11
    # (trial 0's calls are the baseline's, cache hits: free)
    assert trials[0].user_attrs["examples"] == 3 and "duplicate_of" not in trials[0].user_attrs
    assert all(t.user_attrs["duplicate_of"] == 0 and t.user_attrs["lm_calls"] == 0 for t in trials[1:])
    assert all(t.value == trials[0].value for t in trials)
    assert result.optimizer.best_trial_ == 0
    assert "until the budget is spent" in caplog.text and "repeated earlier trials' programs" in caplog.text
    report = subprocess.run(autoprompt_cmd("report", tmp_path / "run"), capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    assert report.stdout.count("COMPLETE (= 0)") == 10
