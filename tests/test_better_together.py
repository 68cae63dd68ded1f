"""BetterTogether strategies end to end on the embedded model: real Optuna search, real LoRA, llama.cpp."""

from __future__ import annotations

import json

import dspy
import pytest

import autoprompt
from autoprompt.bettertogether import STRATEGIES, parse_strategy
from autoprompt.evaluate import evaluate_program

from .conftest import TASKS
from .test_cli import cli


def test_strategies_parse_and_bad_ones_are_named() -> None:
    assert [parse_strategy(s) for s in STRATEGIES] == [("p",), ("w",), ("p", "w"), ("w", "p"), ("p", "w", "p")]
    assert parse_strategy("P->W") == ("p", "w")
    for bad in ("p -> x", "", "p -> -> w"):
        with pytest.raises(ValueError, match="steps are 'p' .* and 'w'"):
            parse_strategy(bad)
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
              "--option", "n_demo_sets=1", "--finetune-option", "max_steps=2", "--finetune-option", "batch_size=4",
              "--train-limit", 12, "--dev-limit", 8, "--test-limit", 6, "--run-dir", run, "--no-progress",
              env_extra={"AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stderr
    for label in ("vanilla zero-shot", "prompt optimization only (p)", "| p -> w |", "weight optimization only (w)"):
        assert label in out.stdout
    results = json.loads((run / "results.json").read_text())
    assert [r["strategy"] for r in results["rows"]] == ["vanilla", "p", "w", "p -> w"]
    assert set(results["steps"]) == {"vanilla", "p", "p -> w", "w"}
    assert all(r["n"] == {"dev": 8, "test": 6} for r in results["rows"])
    log = (run / "run.log").read_text()
    assert log.count("BetterTogether step 'p' (from 'vanilla')") == 1  # the shared prefix ran once
    assert (run / "steps" / "p" / "run" / "study.db").is_file()
    assert json.loads((run / "steps" / "p" / "run" / "config.json").read_text())["lm_spec"] == "local"

    for name, source in (("p-w", "'p'"), ("w", "'vanilla'")):
        step = run / "steps" / name
        manifest = json.loads((step / "data" / "manifest.json").read_text())
        assert source in manifest["source_program"] and manifest["options"]["keep_demos"] is False
        rows = (step / "data" / "train.jsonl").read_text().splitlines()
        assert len(rows) == manifest["counts"]["records"] > 0
        assert (step / "model" / "adapter.gguf").is_file()
        assert json.loads((step / "model" / "finetune.json").read_text())["metrics"]["steps"] == 2
        saved = json.loads((step / "step.json").read_text())
        assert "+lora-" in saved["lm"]["model"]
        program = json.loads((step / "program.json").read_text())
        assert all(not p.get("demos") for k, p in program.items() if isinstance(p, dict) and "demos" in p)

    # the step's program on the step's fine-tuned LM scores what the run recorded
    task = autoprompt.load_task(TASKS / "iris.py")
    step = json.loads((run / "steps" / "p-w" / "step.json").read_text())
    program = autoprompt.load_prompt(run / "steps" / "p-w" / "prompt.json", task)
    lm = autoprompt.build_lm(step["lm_spec"])
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        again = evaluate_program(program, task, "dev", limit=8, progress=False)
    assert again.score == step["scores"]["dev"]["score"]
