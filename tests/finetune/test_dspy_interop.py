"""DSPy's own optimizers fine-tune the embedded model through autoprompt's LoRA provider (real training)."""

from __future__ import annotations

import json

import dspy
import pytest

import autoprompt
from autoprompt.finetune import LocalProvider, dspy_lm

from ..conftest import TASKS


def test_dspy_better_together_fine_tunes_the_embedded_model_on_cpu(tmp_path) -> None:
    task = autoprompt.load_task(TASKS / "iris.py")
    trainset, valset = task.examples("train", limit=12), task.examples("dev", limit=6)

    def metric(example, prediction, trace=None):
        return task.score(example, prediction)

    lm = dspy_lm()
    assert isinstance(lm.provider, LocalProvider) and lm.provider.finetunable
    student = task.make_program()
    student.set_lm(lm)
    optimizer = dspy.BetterTogether(
        metric,
        p=dspy.BootstrapFewShot(metric, max_bootstrapped_demos=2, max_labeled_demos=2),
        w=dspy.BootstrapFinetune(metric, train_kwargs={"max_steps": 2, "batch_size": 4,
                                                       "output_dir": str(tmp_path / "lora")}),
    )
    # DSPy's BootstrapFewShot runs on the settings' LM; its BootstrapFinetune formats data with ChatAdapter
    # (DSPy's JSONAdapter has no format_finetune_data)
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        compiled = optimizer.compile(student, trainset=trainset, valset=valset, strategy="p -> w")
    assert not compiled.flag_compilation_error_occurred
    strategies = {c["strategy"] for c in compiled.candidate_programs}
    assert {"p", "p -> w"} <= strategies
    manifest = json.loads((tmp_path / "lora" / "finetune.json").read_text())
    assert manifest["metrics"]["steps"] == 2 and manifest["data"]["source_program"] == "dspy"
    # the fine-tuned program's LM is the embedded model with the adapter DSPy asked for, served by llama.cpp
    tuned = next(c["program"] for c in compiled.candidate_programs if c["strategy"] == "p -> w")
    model = tuned.predictors()[0].lm.model
    assert "+lora-" in model and model != lm.model
    with dspy.context(adapter=dspy.ChatAdapter()):
        prediction = tuned(**valset[0].inputs())
    assert prediction.get(task.label_field) is not None


def test_only_models_built_by_autoprompt_are_fine_tuned() -> None:
    with pytest.raises(autoprompt.FinetuneError, match="not one .*dspy_lm"):
        LocalProvider.finetune(None, "openai/gpt-4o-mini", [{"messages": []}], None, {})
