"""Local LoRA fine-tuning of a GGUF model on CPU, served afterwards by llama.cpp.

``transformers`` loads (and de-quantizes) the GGUF file, ``peft`` adds LoRA weights, a plain
PyTorch loop trains them on the assistant tokens only, and the LoRA is written as a llama.cpp
adapter so that the fine-tuned model answers at llama.cpp speed (``local?lora=adapter.gguf``).

Why a hand-written loop and not ``transformers.Trainer`` or TRL's ``SFTTrainer``: the loop is 30
lines (completion-only loss, padding, AdamW with linear decay, a tqdm bar with the loss), while
the trainers would add ``accelerate``/``trl`` and their own logging and checkpoint folders to a
job that takes minutes on CPU.

Needs the ``finetune`` extra: ``pip install 'autoprompt[finetune]'`` (torch, transformers, peft, gguf).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

from autoprompt._exceptions import FinetuneError
from autoprompt._version import __version__
from autoprompt.finetune._base import FINETUNE_FORMAT_VERSION, BaseFinetuner, FinetuneResult
from autoprompt.finetune._gguf import GGUF_NAMES, write_lora_adapter

__all__ = ["DEFAULT_TARGET_MODULES", "LoRAFinetuner", "require_finetune_extra"]

logger = logging.getLogger(__name__)

# every linear layer llama.cpp can take a LoRA for (q/k are stored permuted in GGUF files)
DEFAULT_TARGET_MODULES = tuple(name.split(".")[-1] for name in GGUF_NAMES)


def require_finetune_extra() -> None:
    """Raise a clear error when torch, transformers, peft or gguf is missing."""
    missing = []
    for module in ("torch", "transformers", "peft", "gguf"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise FinetuneError(
            f"local fine-tuning needs {', '.join(missing)}: pip install 'autoprompt[finetune]' "
            "(on CPU-only machines first: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)"
        )


class LoRAFinetuner(BaseFinetuner):
    """LoRA on a GGUF model (default: the embedded SmolLM2-135M-Instruct), trained on CPU.

    Args:
        base_model: the GGUF file to fine-tune (default: the embedded model).
        rank, alpha, dropout: LoRA rank, scaling numerator (scale = alpha / rank) and dropout.
        target_modules: linear layers that get a LoRA (names as in transformers' llama model).
        learning_rate: AdamW learning rate (decays linearly to 0).
        epochs: passes over the training data.
        batch_size: examples per optimizer step.
        micro_batch_size: examples per forward/backward pass (gradients accumulate over the batch;
            bounds memory: about 1.5 GB for 2 prompts of 300 tokens).
        max_length: examples with more tokens (prompt + answer) are skipped and counted.
        max_steps: stop after this many steps (default: ``epochs`` full passes).
        seed: seeds the LoRA initialisation and the order of examples.
        threads: torch CPU threads (default: ``$AUTOPROMPT_LLAMA_THREADS`` or all cores).
        progress: show a progress bar with the loss.

    Example:
        >>> tuner = LoRAFinetuner(epochs=2)                             # doctest: +SKIP
        >>> result = tuner.finetune(training_data, "runs/lora")         # doctest: +SKIP
        >>> lm = result.lm()    # the embedded model + adapter, run by llama.cpp
    """

    name = "lora"

    def __init__(
        self,
        *,
        base_model: str | Path | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
        learning_rate: float = 1e-3,
        epochs: int = 2,
        batch_size: int = 8,
        micro_batch_size: int = 2,
        max_length: int = 768,
        max_steps: int | None = None,
        seed: int = 0,
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        self.base_model = Path(base_model) if base_model else None
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules)
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.max_length = max_length
        self.max_steps = max_steps
        self.seed = seed
        self.threads = threads
        self.progress = progress
        bad = sorted(set(self.target_modules) - set(DEFAULT_TARGET_MODULES))
        if bad:
            raise FinetuneError(
                f"target_modules {bad} cannot be served by llama.cpp (q_proj/k_proj are stored permuted in "
                f"GGUF); choose from {list(DEFAULT_TARGET_MODULES)}"
            )
        for field, value in (("rank", rank), ("epochs", epochs), ("batch_size", batch_size),
                             ("micro_batch_size", micro_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise FinetuneError(f"{field} must be a positive integer, got {value!r}")

    def finetune(self, data: Any, output_dir: str | Path) -> FinetuneResult:
        """Train a LoRA on ``data.train``; write ``adapter.gguf``, ``peft/`` and ``finetune.json``.

        Raises:
            FinetuneError: the extra is not installed, or no training example fits ``max_length``.
        """
        require_finetune_extra()
        import torch
        from peft import LoraConfig, get_peft_model
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from autoprompt.export import dump_json
        from autoprompt.lms import smollm2_path

        if not self.progress:  # transformers' own bars (weight loading; GGUF de-quantization uses tqdm itself)
            import functools

            import transformers
            import transformers.modeling_gguf_pytorch_utils as gguf_utils

            transformers.utils.logging.disable_progress_bar()
            gguf_utils.tqdm = functools.partial(tqdm, disable=True)

        if not data.train:
            raise FinetuneError(
                "no training examples: the program passed the metric on none of the split "
                f"(counts: {data.counts}); lower the threshold or compile from a better program"
            )
        started = time.monotonic()
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        base = self.base_model or smollm2_path()
        threads = self.threads or int(os.environ.get("AUTOPROMPT_LLAMA_THREADS", 0)) or os.cpu_count() or 1
        torch.set_num_threads(threads)
        torch.manual_seed(self.seed)

        tokenizer = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
        train, too_long = _encode(tokenizer, data.train, self.max_length)
        val, _ = _encode(tokenizer, data.val, self.max_length)
        if not train:
            raise FinetuneError(
                f"all {len(data.train)} training examples are longer than max_length={self.max_length} tokens; "
                "raise max_length"
            )
        model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, dtype=torch.float32)
        model = get_peft_model(model, LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=self.target_modules, task_type="CAUSAL_LM",
        ))
        steps_per_epoch = math.ceil(len(train) / self.batch_size)
        total = self.max_steps or steps_per_epoch * self.epochs
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        rng = random.Random(self.seed)
        losses: list[float] = []
        val_losses: list[float] = []
        model.train()
        bar = tqdm(total=total, desc="fine-tune (LoRA)", unit="step", disable=not self.progress, leave=False)
        step = 0
        while step < total:
            order = list(range(len(train)))
            rng.shuffle(order)
            for i in range(0, len(order), self.batch_size):
                rows = [train[j] for j in order[i:i + self.batch_size]]
                loss = _step_loss(model, rows, pad_id, self.micro_batch_size, torch, backward=True)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(round(loss, 5))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if step % steps_per_epoch == 0 or step == total:
                    if val:
                        val_losses.append(round(_mean_loss(model, val, pad_id, self.micro_batch_size, torch), 5))
                    logger.info("step %d/%d: train loss %.4f%s", step, total, losses[-1],
                                f", val loss {val_losses[-1]:.4f}" if val else "")
                if step >= total:
                    break
        bar.close()
        model.eval()
        model.save_pretrained(str(out / "peft"))
        adapter = write_lora_adapter(model, out / "adapter.gguf", alpha=self.alpha)
        metrics = {
            "examples": len(train),
            "skipped_too_long": too_long,
            "val_examples": len(val),
            "steps": step,
            "first_loss": losses[0],
            "final_loss": losses[-1],
            "val_loss": val_losses,
            "losses": losses,
            "seconds": round(time.monotonic() - started, 1),
        }
        manifest = {
            "format": "autoprompt.finetune",
            "format_version": FINETUNE_FORMAT_VERSION,
            "autoprompt_version": __version__,
            "finetuner": self.name,
            "base_model": {"path": str(base), "sha256": _sha256(base)},
            "adapter": adapter.name,
            "options": self.options(),
            "data": data.manifest,
            "metrics": metrics,
        }
        (out / "finetune.json").write_text(dump_json(manifest))
        spec = f"local?lora={adapter.resolve()}" if self.base_model is None else \
            f"local:{base.resolve()}?lora={adapter.resolve()}"
        logger.info("fine-tuned %s on %d examples in %d steps (loss %.3f -> %.3f), %.0f s; serve with lm=%r",
                    base.name, len(train), step, losses[0], losses[-1], metrics["seconds"], spec)
        return FinetuneResult(lm_spec=spec, output_dir=out, metrics=metrics, manifest=manifest)


def _encode(tokenizer: Any, records: list[dict[str, Any]], max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    """Token ids and labels (-100 on the prompt: the loss is on the assistant's answer only)."""
    encoded, too_long = [], 0
    for record in records:
        messages = record["messages"]
        if not messages or messages[-1]["role"] != "assistant":
            raise FinetuneError(f"a training record does not end with the assistant's answer: {messages[-1:]!r}")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise FinetuneError("the model's chat template renders the prompt differently with and without the answer")
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(answer_ids) > max_length:
            too_long += 1
            continue
        encoded.append({"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids})
    return encoded, too_long


def _collate(rows: list[dict[str, list[int]]], pad_id: int, torch: Any) -> dict[str, Any]:
    """Left-padded batch: every answer ends at the last position, so only the last few positions
    need logits (a 49k-word vocabulary over every prompt token took ~10 GB on CPU)."""
    width = max(len(r["input_ids"]) for r in rows)
    pads = [width - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": torch.tensor([[pad_id] * n + r["input_ids"] for n, r in zip(pads, rows)]),
        "labels": torch.tensor([[-100] * n + r["labels"] for n, r in zip(pads, rows)]),
        "attention_mask": torch.tensor([[0] * n + [1] * len(r["input_ids"]) for n, r in zip(pads, rows)]),
        "position_ids": torch.tensor([[0] * n + list(range(len(r["input_ids"]))) for n, r in zip(pads, rows)]),
    }


def _answer_tokens(rows: list[dict[str, list[int]]]) -> int:
    return sum(sum(1 for t in r["labels"] if t != -100) for r in rows)


def _summed_loss(model: Any, batch: dict[str, Any], torch: Any) -> Any:
    """Summed cross-entropy over the answer tokens, with logits for the answer positions only."""
    labels = batch["labels"]
    answer = int((labels != -100).sum(dim=1).max())
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=answer + 1)
    logits = out.logits[:, :-1, :]  # position t predicts token t + 1
    target = labels[:, -answer:]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def _step_loss(model: Any, rows: list[dict[str, list[int]]], pad_id: int, micro: int, torch: Any,
               backward: bool) -> float:
    """Mean loss per answer token over ``rows``, run ``micro`` examples at a time (activations of a
    whole batch of ~300-token prompts took over 10 GB on CPU); gradients accumulate when ``backward``."""
    tokens = max(_answer_tokens(rows), 1)
    total = 0.0
    for i in range(0, len(rows), micro):
        loss = _summed_loss(model, _collate(rows[i:i + micro], pad_id, torch), torch)
        if backward:
            (loss / tokens).backward()
        total += loss.item()
    return total / tokens


def _mean_loss(model: Any, rows: list[dict[str, list[int]]], pad_id: int, micro: int, torch: Any) -> float:
    model.eval()
    with torch.no_grad():
        value = _step_loss(model, rows, pad_id, micro, torch, backward=False)
    model.train()
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
