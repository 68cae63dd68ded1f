"""BetterTogether strategies end to end on the embedded model: real Optuna search, real LoRA, llama.cpp."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import dspy
import pytest

import autoprompt
from autoprompt.bettertogether import STRATEGIES, BaseStep, State, parse_strategy
from autoprompt.evaluate import evaluate_program
from autoprompt.lms import LMSpec

from .conftest import TASKS
from .test_cli import cli


def test_resume_takes_an_option_added_since_the_run_started_at_its_default(tmp_path) -> None:
    """A run recorded by an older autoprompt (no ``extra_rounds`` in its w step's options) resumes when the
    step takes the option's default; at another value it is a different run and is refused."""
    from autoprompt._exceptions import RunError
    from autoprompt.bettertogether import WeightStep, _with_added_defaults
    from autoprompt.store import RunStore

    def steps(step: WeightStep) -> dict:
        return {"w": {"class": "autoprompt.bettertogether._steps.WeightStep", "options": step.options()}}

    old = steps(WeightStep())
    del old["w"]["options"]["extra_rounds"]
    store = RunStore.create("better-together", path=tmp_path / "run")
    store.write_json("config.json", {"steps": old})
    store = RunStore.open(tmp_path / "run", "better-together")
    for step, ok in ((WeightStep(), True), (WeightStep(extra_rounds=0), False)):
        new = steps(step)
        recorded = {"steps": _with_added_defaults(store.config["steps"], new, {"w": step})}
        if ok:
            store.check_resume({"steps": new}, ("steps",), recorded)
        else:
            with pytest.raises(RunError, match="cannot resume .* its steps was"):
                store.check_resume({"steps": new}, ("steps",), recorded)
    assert "extra_rounds" not in store.config["steps"]["w"]["options"]  # the run's own record is left as it was


def test_strategies_parse_and_bad_ones_are_named() -> None:
    assert [parse_strategy(s) for s in STRATEGIES] == [("p",), ("w",), ("p", "w"), ("w", "p"), ("p", "w", "p")]
    assert parse_strategy("P->W") == ("p", "w")
    for bad in ("p -> x", "", "p -> -> w"):
        with pytest.raises(ValueError, match="steps are 'p' and 'w' "):
            parse_strategy(bad)
    assert parse_strategy("p -> x", ("p", "w", "x")) == ("p", "x")
    out = cli("better-together", TASKS / "iris.py", "--strategy", "p -> q")
    assert out.returncode == 2 and "invalid strategy 'p -> q'" in out.stderr


def test_remote_lm_without_a_finetuner_is_refused_before_any_work(tmp_path) -> None:
    task = autoprompt.load_task(TASKS / "iris.py")
    with pytest.raises(autoprompt.FinetuneError, match="needs a finetuner for that provider.*OpenAIFinetuner"):
        autoprompt.better_together(task, "w", lm="openai/gpt-4o-mini", run_dir=tmp_path / "bt")
    assert not (tmp_path / "bt").exists()


def test_cli_runs_strategies_sharing_prefixes_and_keeps_every_step(tmp_path) -> None:
    run = tmp_path / "bt"
    out = cli("better-together", TASKS / "iris.py", "--strategy", "p -> w", "--strategy", "w",
              "--option", "n_trials=2", "--option", "minibatches=[4]", "--option", "max_dev=8",
              "--option", "n_demo_sets=1", "--option", "retrieved_demos=false", "--option", "calibrate=false",
              "--finetune-option", "max_steps=2", "--finetune-option", "batch_size=4",
              "--data-option", "balance=false",
              "--train-limit", 12, "--dev-limit", 8, "--test-limit", 6, "--run-dir", run, "--no-progress",
              env_extra={"AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    for label in ("vanilla zero-shot", "prompt optimization only (p)", "| p -> w |", "weight optimization only (w)"):
        assert label in out.stdout
    results = json.loads((run / "results.json").read_text())
    assert [r["strategy"] for r in results["rows"]] == ["vanilla", "p", "w", "p -> w"]
    assert set(results["steps"]) == {"vanilla", "p", "p -> w", "w"}
    assert all(r["n"] == {"dev": 8, "test": 6} for r in results["rows"])
    # a step's time is its own (p -> w ran p first in this call: p's time is not counted twice)
    assert sum(r["seconds"] for r in results["rows"]) <= results["seconds"] + 1
    assert all(0 < r["fit_seconds"] <= r["seconds"] for r in results["rows"] if r["strategy"] != "vanilla")
    log = (run / "run.log").read_text()
    assert log.count("BetterTogether step 'p' (from 'vanilla')") == 1  # the shared prefix ran once
    assert (run / "steps" / "p" / "run" / "study.db").is_file()
    assert json.loads((run / "steps" / "p" / "run" / "config.json").read_text())["lm_spec"]["model"] == "local"

    for name, source in (("p-w", "'p'"), ("w", "'vanilla'")):
        step = run / "steps" / name
        manifest = json.loads((step / "data" / "manifest.json").read_text())
        assert source in manifest["source_program"] and manifest["options"]["keep_demos"] is False
        assert manifest["options"]["max_attempts"] == 5 * manifest["options"]["max_traces"] == 5000  # the default cap
        rows = (step / "data" / "train.jsonl").read_text().splitlines()
        val = step / "data" / "val.jsonl"
        held = val.read_text().splitlines() if val.is_file() else []
        assert len(rows) + len(held) == manifest["counts"]["records"] > 0
        assert len(held) == round(0.1 * manifest["counts"]["records"])  # the default val_fraction, over all labels
        assert (step / "model" / "adapter.gguf").is_file()
        assert json.loads((step / "model" / "finetune.json").read_text())["metrics"]["steps"] == 2
        saved = json.loads((step / "step.json").read_text())
        assert saved["lm"]["model"] == "local" and saved["lm"]["adapter"].endswith(f"{name}/model/adapter.gguf")
        program = json.loads((step / "program.json").read_text())
        assert all(not p.get("demos") for k, p in program.items() if isinstance(p, dict) and "demos" in p)

    # the step's program on the step's fine-tuned LM scores what the run recorded
    task = autoprompt.load_task(TASKS / "iris.py")
    step = json.loads((run / "steps" / "p-w" / "step.json").read_text())
    program = autoprompt.load_prompt(run / "steps" / "p-w" / "prompt.json", task)
    lm = LMSpec.from_dict(step["lm"]).build()
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        again = evaluate_program(program, task, "dev", limit=8, progress=False)
    assert again.score == step["scores"]["dev"]["score"]


class DropDemos(BaseStep):
    """A user's own step: the program without its demos, on the same LM."""

    def run(self, state, context):
        program = state.program.deepcopy()
        for _, predictor in program.named_predictors():
            predictor.demos = []
        (context.folder / "note.txt").write_text("demos dropped")
        return State(program, state.lm, details={"dropped": "demos"})


def test_a_user_step_is_a_new_letter_without_editing_the_library(tmp_path) -> None:
    task = autoprompt.load_task(TASKS / "iris.py")
    result = autoprompt.better_together(task, "x", steps={"x": DropDemos()}, run_dir=tmp_path / "bt",
                                        dev_limit=6, test=False, progress=False)
    assert list(result.steps) == ["vanilla", "x"] and result["x"].details == {"dropped": "demos"}
    assert result["x"].score("dev") == result["vanilla"].score("dev")  # same program, same LM
    assert (tmp_path / "bt" / "steps" / "x" / "note.txt").is_file()
    config = json.loads((tmp_path / "bt" / "config.json").read_text())
    assert config["steps"]["x"]["class"].endswith("DropDemos") and config["lm"] == {"format_version": 1,
                                                                                   "model": "local"}
    with pytest.raises(ValueError, match="invalid strategy 'p -> y': steps are 'p', 'w' and 'x'"):
        autoprompt.better_together(task, "p -> y", steps={"x": DropDemos()}, run_dir=tmp_path / "other")
    with pytest.raises(TypeError, match=r"steps\['x'\] must be a BaseStep"):
        autoprompt.better_together(task, "x", steps={"x": "drop demos"}, run_dir=tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_traces_too_few_to_balance_stop_the_w_step_and_keep_the_finished_ones(tmp_path) -> None:
    """One train example cannot give passing traces of two labels: one clear error, vanilla stays."""
    run = tmp_path / "bt"
    out = cli("better-together", TASKS / "iris.py", "--strategy", "w", "--train-limit", 1, "--dev-limit", 3,
              "--no-test", "--run-dir", run, "--no-progress",
              env_extra={"AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot balance the training data of task 'iris'" in out.stderr and "balance=False" in out.stderr
    assert (run / "steps" / "vanilla" / "step.json").is_file() and not (run / "steps" / "w" / "step.json").exists()


def test_a_killed_run_resumes_from_its_last_finished_step(tmp_path) -> None:
    """kill -9 during the w step; --resume loads p (no LM call, study untouched) and finishes w."""
    run = tmp_path / "bt"
    args = ["better-together", TASKS / "iris.py", "--strategy", "p -> w", "--option", "n_trials=2",
            "--option", "minibatches=[4]", "--option", "max_dev=6", "--option", "n_demo_sets=1",
            "--finetune-option", "max_steps=2", "--finetune-option", "batch_size=4", "--data-option", "balance=false",
            "--train-limit", 12, "--dev-limit", 6, "--no-test", "--run-dir", run, "--no-progress"]
    env = {**os.environ, "AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "autoprompt", *map(str, args)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (run / "steps" / "p" / "step.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its p step finished"
        time.sleep(0.2)
    time.sleep(3)  # inside the w step: tracing the train split
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "steps" / "p-w" / "step.json").exists()
    p_step = (run / "steps" / "p" / "step.json").read_bytes()
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'steps' / 'p' / 'run' / 'study.db'}")
    trials = len(study.trials)

    again = cli(*args, "--resume", env_extra={"AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")})
    assert again.returncode == 0, again.stderr
    log = (run / "run.log").read_text()
    assert "step 'p': finished earlier, loaded" in log and "(resumed)" in log
    assert log.count("BetterTogether step 'p' (from 'vanilla')") == 1  # p ran once, before the kill
    assert (run / "steps" / "p" / "step.json").read_bytes() == p_step
    assert len(optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'steps' / 'p' / 'run' / 'study.db'}")
               .trials) == trials
    results = json.loads((run / "results.json").read_text())
    assert [r["strategy"] for r in results["rows"]] == ["vanilla", "p", "p -> w"]
    # the resumed run is the same run: other options are refused with the fix
    other = cli(*[a if a != 12 else 16 for a in args], "--resume")
    assert other.returncode == 2 and "cannot resume" in other.stderr and "limits" in other.stderr


def test_a_p_step_keeps_the_program_it_was_given_when_the_search_does_worse_on_dev(tmp_path) -> None:
    """The given program stays a candidate: its known dev score (the parent step's, same LM and rows) is
    compared with the search's best; below it, the step returns the given program unchanged."""
    from autoprompt.bettertogether import PromptStep, StepContext

    task = autoprompt.load_task(TASKS / "iris.py")
    given = task.make_program()
    given.predictors()[0].signature = given.predictors()[0].signature.with_instructions("Name the iris species.")
    step = PromptStep("optuna", budget=24, n_trials=2)
    context = StepContext(task, tmp_path / "p", limits={"train": 10, "dev": 6}, progress=False, name="x -> p",
                          parent="x")
    better = step.run(State(given, LMSpec.parse("local"), scores={"dev": 1.01}), context)
    assert better.program is given and better.details["kept"] == "incoming"
    assert better.details["incoming_dev"] == 1.01 and 0.0 <= better.details["search_dev"] <= 1.0
    context.resume = True  # the finished study again: no new trial, same best program
    worse = step.run(State(given, LMSpec.parse("local"), scores={"dev": -0.01}), context)
    assert worse.program is not given and worse.details["kept"] == "search"
    assert worse.details["evaluations"]["dev"].score == better.details["search_dev"]


def test_the_w_steps_program_drops_what_was_fitted_to_the_base_model():
    """Pure logic: a searched predictor with per-input demos, the neighbours' label prior and a calibration's
    logit_bias; the program the tuned LM runs keeps none of the fitted parts and, unless the training data
    kept demos, no demos (the prior is detached first: its class wraps the retrieving one)."""
    from autoprompt._retrieval import Retriever, attach, retriever_of
    from autoprompt._vote_prior import LabelPrior, attach_prior, prior_of
    from autoprompt.bettertogether._steps import for_tuned_lm
    from tests.test_retrieval import POOL

    program = dspy.Predict("text -> label")
    attach(program, Retriever(POOL, ["text"], 2))
    attach_prior(program, LabelPrior(POOL, ["text"], "label", ["positive", "negative"], [101, 202], k=3))
    program.config = {"logit_bias": {"101": 1.0}, "temperature": 0.0}
    program.demos = [dspy.Example(text="fixed", label="positive")]

    bare = for_tuned_lm(program, keep_demos=False)
    assert type(bare) is dspy.Predict and not bare.demos and bare.config == {"temperature": 0.0}
    kept = for_tuned_lm(program, keep_demos=True)
    assert prior_of(kept) is None and retriever_of(kept) is not None and kept.demos and "logit_bias" not in kept.config
    assert prior_of(program) is not None and retriever_of(program) is not None  # the given program is unchanged
