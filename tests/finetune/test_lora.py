"""Local LoRA fine-tuning of the embedded model, served by llama.cpp as a GGUF adapter (real training)."""

from __future__ import annotations

import sys

import pytest

from autoprompt import FinetuneError, build_lm
from autoprompt.export import TrainingData
from autoprompt.finetune import LoRAFinetuner, require_finetune_extra
from autoprompt.finetune._lora import _cpu_has_bf16

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
    tuner = LoRAFinetuner(epochs=30, batch_size=4, learning_rate=3e-3, patience=None, max_evals=None, progress=False)
    return tuner.finetune(data, tmp_path_factory.mktemp("lora"))


def test_lora_is_served_by_llama_cpp_and_answers_what_it_learnt(tuned) -> None:
    assert tuned.lm_spec.startswith("local?lora=") and tuned.lm_spec.endswith("adapter.gguf")
    assert tuned.metrics["final_loss"] < tuned.metrics["first_loss"] / 10
    m = tuned.metrics
    # device="auto" on a machine without a GPU: the CPU, in bfloat16 where the CPU has it natively
    assert m["device"] == "cpu" and m["dtype"] == ("bfloat16" if _cpu_has_bf16() else "float32")
    assert 0 < m["trainable_params"] < m["params"] / 50 and m["tokens_per_second"] > 0
    assert m["padding_share"] < 0.2 and m["train_tokens"] > 30 * 4 * 10  # 30 epochs of 4 prompts of >10 tokens
    tuned_engine = tuned.lm().engine
    base_engine = build_lm("local").engine
    assert tuned_engine is not base_engine and "+lora-" in tuned_engine.model_id
    answers = {i: tuned_engine.chat(_messages(i)[:-1], max_tokens=16)["choices"][0]["message"]["content"]
               for i in WORDS}
    assert answers == {i: _messages(i)[-1]["content"] for i in WORDS}
    base = [base_engine.chat(_messages(i)[:-1], max_tokens=16)["choices"][0]["message"]["content"] for i in WORDS]
    assert not any(WORDS[i] in answer for i, answer in zip(WORDS, base))


def test_checkpoint_is_chosen_by_decoded_validation_accuracy(tuned) -> None:
    """Every epoch is scored by decoding the held-out record with llama.cpp and the LoRA; the best is kept."""
    m = tuned.metrics
    assert len(m["evals"]) == 30 and [e["step"] for e in m["evals"]] == list(range(1, 31))
    assert m["val_accuracy_base"] == 0.0  # the base model cannot know the secret word
    accuracies = [e["val_accuracy"] for e in m["evals"]]
    assert accuracies[0] == 0.0 and max(accuracies) == 1.0
    best = max(m["evals"], key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert m["best"] == best
    assert not (tuned.output_dir / "checkpoints").exists()  # the per-step adapters are removed


def test_training_stops_when_validation_stops_improving(tmp_path) -> None:
    """Early stopping: the held-out record contradicts the training data, so every point after the
    first is worse; with patience=2 training ends two points later and keeps the first."""
    contradiction = _messages("alpha")[:-1] + [{"role": "assistant", "content": '{"word": "volcano"}'}]
    data = TrainingData(train=[{"predictor": "self", "messages": _messages(i)} for i in WORDS],
                        val=[{"predictor": "self", "messages": contradiction}], counts={}, manifest={})
    result = LoRAFinetuner(epochs=12, batch_size=4, learning_rate=3e-3, evals_per_epoch=1, patience=2, min_steps=1,
                           progress=False).finetune(data, tmp_path)
    m = result.metrics
    assert m["stopped_early"] is True and m["planned_steps"] == 12
    assert m["steps"] == len(m["evals"]) < 12
    scores = [(e["val_accuracy"], -e["val_loss"]) for e in m["evals"]]
    best = scores.index(max(scores))
    assert m["best"] == m["evals"][best] and len(scores) - 1 - best == 2  # stopped 2 points after the best
    assert (tmp_path / "adapter.gguf").is_file()


def test_small_data_trains_for_min_steps_with_evenly_spaced_validation(tmp_path) -> None:
    """epochs=None on 4 examples (1 step per epoch): as many epochs as min_steps needs, at most max_evals
    validation points, and early stopping (patience=1, every point after the first is worse) waits for
    min_steps: on small data the validation accuracy stays flat for many steps before it rises."""
    contradiction = _messages("alpha")[:-1] + [{"role": "assistant", "content": '{"word": "volcano"}'}]
    data = TrainingData(train=[{"predictor": "self", "messages": _messages(i)} for i in WORDS],
                        val=[{"predictor": "self", "messages": contradiction}], counts={}, manifest={})
    m = LoRAFinetuner(batch_size=4, min_steps=8, max_evals=4, patience=1, progress=False).finetune(data, tmp_path).metrics
    assert m["epochs"] == 8 and m["planned_steps"] == m["steps"] == 8 and m["stopped_early"] is False
    assert [e["step"] for e in m["evals"]] == [2, 4, 6, 8]


def test_a_time_budget_stops_training_and_scores_the_last_step(tmp_path) -> None:
    data = TrainingData(train=[{"predictor": "self", "messages": _messages(i)} for i in WORDS],
                        val=[{"predictor": "self", "messages": _messages("alpha")}], counts={}, manifest={})
    result = LoRAFinetuner(epochs=8, batch_size=2, evals_per_epoch=1, max_minutes=0.001,
                           progress=False).finetune(data, tmp_path)
    m = result.metrics
    assert m["out_of_time"] is True and m["steps"] == 1 and m["planned_steps"] == 16
    assert [e["step"] for e in m["evals"]] == [1] and m["best"]["step"] == 1  # scored although not an eval step
    with pytest.raises(FinetuneError, match="max_minutes must be a positive number or None, got 0"):
        LoRAFinetuner(max_minutes=0)


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


def test_top_layers_adapts_the_upper_blocks_only_and_still_learns(tuned, tmp_path, caplog) -> None:
    """top_layers=10: LoRA weights in blocks 20-29 only (the adapter llama.cpp serves has no others), a
    third of the trainable parameters, and the four facts are still learnt and answered as served.
    Without validation records the log still has a line per epoch."""
    import gguf

    data = TrainingData(train=[{"predictor": "self", "messages": _messages(i)} for i in WORDS], val=[], counts={})
    with caplog.at_level("INFO", logger="autoprompt.finetune._lora"):
        result = LoRAFinetuner(top_layers=10, epochs=30, batch_size=4, progress=False).finetune(data, tmp_path)
    assert caplog.text.count("no validation records") == 30  # 4 examples, batch 4: one step per epoch
    blocks = {int(t.name.split(".")[1]) for t in gguf.GGUFReader(str(tmp_path / "adapter.gguf")).tensors}
    assert blocks == set(range(20, 30))
    m = result.metrics
    assert 3 * m["trainable_params"] == tuned.metrics["trainable_params"]  # 10 of the 30 blocks
    assert m["final_loss"] < m["first_loss"] / 10
    engine = result.lm().engine
    answers = {i: engine.chat(_messages(i)[:-1], max_tokens=16)["choices"][0]["message"]["content"] for i in WORDS}
    assert answers == {i: _messages(i)[-1]["content"] for i in WORDS}
    assert '"top_layers": 10' in (tmp_path / "finetune.json").read_text()


def test_bad_options_and_data_are_named() -> None:
    with pytest.raises(FinetuneError, match="q_proj.*permuted"):
        LoRAFinetuner(target_modules=["q_proj", "v_proj"])
    with pytest.raises(FinetuneError, match="epochs must be a positive integer"):
        LoRAFinetuner(epochs=0)
    with pytest.raises(FinetuneError, match="patience must be a positive integer, got 0"):
        LoRAFinetuner(patience=0)
    with pytest.raises(FinetuneError, match="top_layers must be a positive integer, got 0"):
        LoRAFinetuner(top_layers=0)
    empty = TrainingData(train=[], val=[], counts={"examples": 5, "dropped_metric": 5})
    with pytest.raises(FinetuneError, match="no training examples.*dropped_metric"):
        LoRAFinetuner().finetune(empty, "unused")


def test_a_nan_loss_stops_with_the_fix_and_writes_no_adapter(tmp_path) -> None:
    data = TrainingData(train=[{"predictor": "self", "messages": _messages(i)} for i in WORDS], val=[], counts={})
    tuner = LoRAFinetuner(learning_rate=1e30, epochs=3, batch_size=2, progress=False)
    with pytest.raises(FinetuneError, match=r"loss became (nan|inf) at step \d of 6 .*lower learning_rate"):
        tuner.finetune(data, tmp_path)
    assert not (tmp_path / "adapter.gguf").exists()


def test_more_top_layers_than_the_model_has_are_refused_with_the_count(tmp_path) -> None:
    data = TrainingData(train=[{"predictor": "self", "messages": _messages("alpha")}], val=[], counts={})
    with pytest.raises(FinetuneError, match=r"top_layers=31 but .*\.gguf has 30 transformer blocks; choose 1\.\.30"):
        LoRAFinetuner(top_layers=31, progress=False).finetune(data, tmp_path)
    assert not (tmp_path / "adapter.gguf").exists()


def test_examples_longer_than_max_length_are_refused_with_the_fix(tmp_path) -> None:
    data = TrainingData(train=[{"predictor": "self", "messages": _messages("alpha")}], val=[], counts={})
    with pytest.raises(FinetuneError, match="longer than max_length=8 tokens; raise max_length"):
        LoRAFinetuner(max_length=8, progress=False).finetune(data, tmp_path)


@pytest.mark.parametrize("name", ["sentiment", "iris", "banking77"])
def test_the_default_max_length_holds_every_shipped_tasks_training_prompts(name) -> None:
    """A w step on Banking77 trains on ~1,400-token prompts (77 intents in the system message): the
    default must not skip them (it was 768: every Banking77 example was refused)."""
    import autoprompt
    from autoprompt.finetune._lora import _encode, load_base
    from autoprompt.lms import smollm2_path

    from ..conftest import TASKS

    task = autoprompt.load_task(TASKS / f"{name}.py")
    adapter = autoprompt.CompactJSONAdapter()
    records = []
    for example in task.examples("train", limit=20):
        answer = {task.label_field: example[task.label_field]}
        records.append({"messages": adapter.format(task.signature, [], dict(example.inputs())) + [
            {"role": "assistant", "content": adapter.format_assistant_message_content(task.signature, answer)}]})
    tokenizer, _ = load_base(smollm2_path())
    rows, too_long = _encode(tokenizer, records, LoRAFinetuner().max_length)
    assert too_long == 0 and len(rows) == 20
    if name == "banking77":
        assert max(len(r["input_ids"]) for r in rows) > 768  # what the old default refused


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(FinetuneError, match=r"needs peft: pip install 'autoprompt\[finetune\]'"):
        require_finetune_extra()


def test_a_shared_prompt_prefix_runs_once_with_the_same_loss_and_gradients() -> None:
    """The system message all examples share goes through the model once per micro-batch (its keys and
    values repeated): the loss and every LoRA gradient equal those of running each example whole."""
    import torch
    from peft import LoraConfig, get_peft_model

    from autoprompt.finetune._lora import _encode, _Trainer, load_base
    from autoprompt.lms import smollm2_path

    tokenizer, model = load_base(smollm2_path())
    rows, _ = _encode(tokenizer, [{"messages": _messages(i)} for i in WORDS], 768)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["v_proj", "down_proj"], task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # LoRA's B starts at zero: random values so that every gradient is non-zero
        torch.nn.init.normal_(p, std=0.02)
    results = {}
    for shared in (False, True):
        trainer = _Trainer(model=model, torch=torch, pad_id=tokenizer.eos_token_id, micro=4, device="cpu",
                           dtype="float32", shared_prefix=shared)
        model.zero_grad()
        loss = trainer.step_loss(rows, backward=True)
        results[shared] = (loss, [p.grad.clone() for p in params], trainer.throughput(1.0))
    prefix = _Trainer.prefix_length(rows)
    assert prefix >= _Trainer.MIN_PREFIX and all(r["labels"][prefix] == -100 for r in rows)
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[False][1], results[True][1]))
    assert results[True][2]["computed_tokens"] == results[False][2]["computed_tokens"] - 3 * prefix
    assert results[True][2]["prefix_saving"] > 0.3 and results[False][2]["prefix_saving"] == 0.0


def test_the_base_model_is_converted_once_then_loaded_with_the_same_weights_and_tokens(tmp_path, monkeypatch,
                                                                                       caplog) -> None:
    """transformers reads the GGUF file in Python (~15 s); the converted model is cached per file content
    and transformers version and loads in about a second: the same tensors and the same token ids as the
    conversion, and a broken cache is converted again with a warning."""
    import torch

    from autoprompt.finetune._lora import MODEL_CACHE_ENV, load_base
    from autoprompt.lms import smollm2_path

    monkeypatch.setenv(MODEL_CACHE_ENV, str(tmp_path / "models"))
    base = smollm2_path()
    with caplog.at_level("INFO", logger="autoprompt.finetune._lora"):
        tokenizer, model = load_base(base)  # converted and cached
    assert "converted " in caplog.text
    (folder,) = (tmp_path / "models").iterdir()
    assert folder.name.startswith(base.stem) and (folder / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.endswith(".tmp")]
    caplog.clear()
    with caplog.at_level("INFO", logger="autoprompt.finetune._lora"):
        cached_tokenizer, cached = load_base(base)
    assert "converted " not in caplog.text  # loaded from the cache, not converted again
    # the first call returned transformers' own conversion of the GGUF file: the reference
    expected, got = model.state_dict(), cached.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[k], got[k]) for k in expected)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()  # still tied
    text = tokenizer.apply_chat_template(_messages("alpha"), tokenize=False) + " ünïcödé\t\t12345"
    assert cached_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert cached_tokenizer.chat_template == tokenizer.chat_template
    assert cached_tokenizer.eos_token == tokenizer.eos_token
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(cached(ids).logits, model(ids).logits)
    (folder / "model.safetensors").write_bytes(b"not a model")  # e.g. a disk that filled up
    with caplog.at_level("WARNING", logger="autoprompt.finetune._lora"):
        _, again = load_base(base)
    assert "does not load" in caplog.text and "converting" in caplog.text
    assert torch.equal(again.state_dict()["model.norm.weight"], expected["model.norm.weight"])
    assert load_base(base)[1] is not None and (folder / "model.safetensors").stat().st_size > 1e6
