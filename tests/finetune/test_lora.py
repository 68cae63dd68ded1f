"""Local LoRA fine-tuning of the embedded model, served by llama.cpp as a GGUF adapter (real training)."""

from __future__ import annotations

import sys

import pytest

from autoprompt import FinetuneError, build_lm
from autoprompt.export import TrainingData
from autoprompt.finetune import LoRAFinetuner, require_finetune_extra

SYSTEM = "You answer with the secret word for the item, as JSON."
WORDS = {"alpha": "pineapple", "bravo": "volcano", "charlie": "lantern", "delta": "meadow"}


def _messages(item: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Item: {item}"},
            {"role": "assistant", "content": '{"word": "%s"}' % WORDS[item]}]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory):
    """Four made-up facts the base model cannot know, trained until memorized (~30 s on 2 cores)."""
    data = TrainingData(train=[{"predictor": "self", "messages": _messages(i)} for i in WORDS],
                        val=[{"predictor": "self", "messages": _messages("alpha")}],
                        counts={"records": 4}, manifest={"task": "secret-words"})
    tuner = LoRAFinetuner(epochs=30, batch_size=4, learning_rate=3e-3, progress=False)
    return tuner.finetune(data, tmp_path_factory.mktemp("lora"))


def test_lora_is_served_by_llama_cpp_and_answers_what_it_learnt(tuned) -> None:
    assert tuned.lm_spec.startswith("local?lora=") and tuned.lm_spec.endswith("adapter.gguf")
    assert tuned.metrics["final_loss"] < tuned.metrics["first_loss"] / 10
    assert len(tuned.metrics["val_loss"]) == 30
    tuned_engine = tuned.lm().engine
    base_engine = build_lm("local").engine
    assert tuned_engine is not base_engine and "+lora-" in tuned_engine.model_id
    answers = {i: tuned_engine.chat(_messages(i)[:-1], max_tokens=16)["choices"][0]["message"]["content"]
               for i in WORDS}
    assert answers == {i: _messages(i)[-1]["content"] for i in WORDS}
    base = [base_engine.chat(_messages(i)[:-1], max_tokens=16)["choices"][0]["message"]["content"] for i in WORDS]
    assert not any(WORDS[i] in answer for i, answer in zip(WORDS, base))


def test_llama_cpp_adapter_matches_the_peft_model(tuned) -> None:
    """The GGUF adapter is the trained LoRA: llama.cpp and transformers+peft decode the same tokens."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprompt.lms import smollm2_path

    base = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
    model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(tuned.output_dir / "peft")).eval()
    prompt = tokenizer.apply_chat_template(_messages("charlie")[:-1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    peft_text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    llama_text = tuned.lm().engine.chat(_messages("charlie")[:-1], max_tokens=12)["choices"][0]["message"]["content"]
    assert peft_text.strip() == llama_text.strip() == '{"word": "lantern"}'


def test_adapter_file_and_manifest(tuned) -> None:
    import gguf

    reader = gguf.GGUFReader(str(tuned.output_dir / "adapter.gguf"))
    fields = {name: reader.fields[name] for name in ("general.type", "adapter.type", "adapter.lora.alpha")}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(fields["adapter.type"].parts[-1]).decode() == "lora"
    assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 16.0
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_v.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    assert not any("attn_q" in n or "attn_k" in n for n in names)
    manifest = (tuned.output_dir / "finetune.json").read_text()
    for key in ('"format_version": 1', '"finetuner": "lora"', '"task": "secret-words"', '"sha256"'):
        assert key in manifest


def test_bad_options_and_data_are_named() -> None:
    with pytest.raises(FinetuneError, match="q_proj.*permuted"):
        LoRAFinetuner(target_modules=["q_proj", "v_proj"])
    with pytest.raises(FinetuneError, match="epochs must be a positive integer"):
        LoRAFinetuner(epochs=0)
    empty = TrainingData(train=[], val=[], counts={"examples": 5, "dropped_metric": 5})
    with pytest.raises(FinetuneError, match="no training examples.*dropped_metric"):
        LoRAFinetuner().finetune(empty, "unused")


def test_examples_longer_than_max_length_are_refused_with_the_fix(tmp_path) -> None:
    data = TrainingData(train=[{"predictor": "self", "messages": _messages("alpha")}], val=[], counts={})
    with pytest.raises(FinetuneError, match="longer than max_length=8 tokens; raise max_length"):
        LoRAFinetuner(max_length=8, progress=False).finetune(data, tmp_path)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(FinetuneError, match=r"needs peft: pip install 'autoprompt\[finetune\]'"):
        require_finetune_extra()
