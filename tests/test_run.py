"""optimize(): the run directory, scores, resume, and the LM cache making reruns free."""

from __future__ import annotations

import json

import pytest

import autoprompt
from autoprompt import RunError

OPTUNA_SMALL = dict(optimizer="optuna", n_trials=3, n_instructions=1, n_demo_sets=2, max_demos=2, minibatches=(3,))


def test_run_directory_holds_everything(small_task, tmp_path):
    result = autoprompt.optimize(small_task, run_dir=tmp_path / "run", dev_limit=6, progress=False, **OPTUNA_SMALL)
    run = tmp_path / "run"
    for name in ("config.json", "scores.json", "program.json", "prompt.json", "run.log", "study.db",
                 "evaluations/baseline-dev.jsonl", "evaluations/optimized-dev.jsonl"):
        assert (run / name).is_file(), name
    assert 0.0 <= result.baseline_score <= 1.0 and 0.0 <= result.best_score <= 1.0
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"]["name"] == "optuna" and config["optimizer"]["options"]["n_trials"] == 3
    assert config["task"]["name"] == "sentiment" and config["lm"]["model"].startswith("local/")
    test_score = result.evaluate("test", limit=4, progress=False)
    scores = json.loads((run / "scores.json").read_text())
    assert scores["scores"]["optimized"]["test"]["score"] == test_score
    assert scores["scores"]["baseline"]["dev"]["n"] == 6
    assert "optimize_seconds" in scores["usage"]
    assert len(result.study.trials) == 3
    # the exported prompt reloads into the task's program with the same dev score
    reloaded = autoprompt.load_prompt(run / "prompt.json", small_task)
    import dspy

    from autoprompt.evaluate import evaluate_program

    with dspy.context(lm=result.lm, adapter=dspy.JSONAdapter()):
        again = evaluate_program(reloaded, small_task, "dev", limit=6, progress=False)
    assert again.score == result.best_score


def test_rerun_is_answered_from_the_cache_and_resume_continues(small_task, tmp_path):
    options = dict(dev_limit=5, progress=False, seed=7, **OPTUNA_SMALL)
    first = autoprompt.optimize(small_task, run_dir=tmp_path / "a", **options)
    first_params = [t.params for t in first.study.trials]
    second = autoprompt.optimize(small_task, run_dir=tmp_path / "b", **options)
    assert second.usage["lm_calls"] == 0, "the same optimization again should cost no LM call"
    assert second.best_score == first.best_score
    with pytest.raises(RunError, match="already holds a run"):
        autoprompt.optimize(small_task, run_dir=tmp_path / "a", **options)
    more = dict(options, n_trials=5)
    resumed = autoprompt.optimize(small_task, run_dir=tmp_path / "a", resume=True, **more)
    assert len(resumed.study.trials) == 5
    assert [t.params for t in resumed.study.trials[:3]] == first_params


def test_bad_arguments(small_task, tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        autoprompt.optimize(small_task, run_dir=tmp_path / "nothing", resume=True)
    with pytest.raises(TypeError, match="Invalid budget argument"):
        autoprompt.optimize(small_task, budget="lots", run_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="max_calls must be positive"):
        autoprompt.Budget(max_calls=0)


def test_configure_cache_honours_the_variable_and_leaves_a_configured_cache_alone(tmp_path, monkeypatch):
    """Every command calls ``configure_cache(--cache-dir)``: the folder given wins, then $AUTOPROMPT_CACHE_DIR;
    with neither, the cache configured before stays (it used to be reset to DSPy's folder in $HOME)."""
    import dspy

    def folder() -> str:
        return dspy.cache.disk_cache.directory

    session = folder()  # the test session's own cache (conftest)
    monkeypatch.delenv("AUTOPROMPT_CACHE_DIR", raising=False)
    try:
        autoprompt.configure_cache(tmp_path / "given")
        assert folder() == str(tmp_path / "given") and (tmp_path / "given").is_dir()
        autoprompt.configure_cache(None)
        assert folder() == str(tmp_path / "given")
        monkeypatch.setenv("AUTOPROMPT_CACHE_DIR", str(tmp_path / "from-env"))
        autoprompt.configure_cache(None)
        assert folder() == str(tmp_path / "from-env")
        autoprompt.configure_cache(tmp_path / "given")  # the argument beats the variable
        assert folder() == str(tmp_path / "given")
        autoprompt.configure_cache(enabled=False)
        assert dspy.cache.enable_disk_cache is False and dspy.cache.enable_memory_cache is False
    finally:
        autoprompt.configure_cache(session)
    assert folder() == session and dspy.cache.enable_disk_cache
