"""Local LoRA fine-tuning of a GGUF model on CPU, served afterwards by llama.cpp.

``transformers`` loads (and de-quantizes) the GGUF file, ``peft`` adds LoRA weights, a plain
PyTorch loop trains them on the assistant tokens only, and the LoRA is written as a llama.cpp
adapter so that the fine-tuned model answers at llama.cpp speed (``local?lora=adapter.gguf``).

The checkpoint is chosen on held-out data, the way it will be used: at every evaluation point
(``evals_per_epoch`` per epoch) the LoRA is written as a llama.cpp adapter and the validation
records are *decoded* by llama.cpp with it (grammar-constrained by the answer's JSON schema, as
served); the step with the best validation accuracy (ties: lower validation loss) is kept. A LoRA
that collapses onto one answer scores the share of that answer and is not chosen over one that
learnt the task. Micro-batches are built from examples of similar length (bucketing), so little
compute goes to padding.

Why a hand-written loop and not ``transformers.Trainer`` or TRL's ``SFTTrainer``: the loop is 30
lines (completion-only loss, padding, AdamW with linear decay, a tqdm bar with the loss), while
the trainers would add ``accelerate``/``trl`` and their own logging and checkpoint folders to a
job that takes minutes on CPU.

Needs the ``finetune`` extra: ``pip install 'autoprompt[finetune]'`` (torch, transformers, peft, gguf).
"""

from __future__ import annotations

import functools
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
from autoprompt.lms._local import MODEL_CACHE_ENV, file_sha256, model_cache_dir

__all__ = ["DEFAULT_TARGET_MODULES", "MODEL_CACHE_ENV", "LoRAFinetuner", "load_base", "require_finetune_extra"]

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
        top_layers: give a LoRA to the last ``top_layers`` transformer blocks only (``None``: every
            block). Gradients stop at the lowest adapted block, so the backward pass runs through
            ``top_layers`` of the model's blocks (SmolLM2-135M has 30): fewer FLOPs per token.
        learning_rate: AdamW learning rate (decays linearly to 0). The default, 3e-3, comes from the sweep
            in ``benchmarks/results/lora_sweep.md``: on 134 SST-2 examples 2 epochs at 1e-3 scored 78.4% test,
            at 3e-3 86.9% (1e-3 needs 6 epochs, 2.3x the time, for 87.2%).
        epochs: passes over the training data. ``None`` (default): 2, or more on small data so that
            training runs at least ``min_steps`` optimizer steps, up to ``MAX_AUTO_EPOCHS`` (30: 36 iris
            traces get 150 steps; 4 examples get 30, not 150 passes over the same 4).
        min_steps: the floor of the automatic epochs, and early stopping never ends training before
            it. Small data needs many steps: on 36 gold-labelled iris examples the LoRA scored 92% test
            after 150 steps where 2 epochs (10 steps) scored 42%, and its validation accuracy stayed at
            chance for the first 60 steps (``benchmarks/results/better_together.md``, cells gold and gold-v2).
        batch_size: examples per optimizer step.
        micro_batch_size: examples per forward/backward pass (gradients accumulate over the batch;
            bounds memory: about 1.5 GB for 2 prompts of 300 tokens).
        max_length: examples with more tokens (prompt + answer) are skipped and counted. The default,
            2048, holds every shipped task's prompts: a Banking77 prompt is ~1,400 tokens (its 77
            intents are listed in the system message), an SST-2 prompt ~230; the system message all
            examples share runs once per micro-batch (``shared_prefix``), so long shared prompts cost
            little.
        max_steps: stop after this many steps (default: ``epochs`` full passes).
        max_minutes: stop training after this much wall time (validation included); the best
            validation point so far is kept (a fine-tuning budget, e.g. for :func:`autoprompt.decide`).
        evals_per_epoch: validation points per epoch (validation accuracy by decoding with llama.cpp
            and validation loss); the best one is the checkpoint kept. Needs ``data.val``.
        max_evals: at most this many validation points in all (many epochs of small data: evenly
            spaced instead); ``None``: no cap.
        patience: stop when this many validation points in a row did not beat the best one (early
            stopping, as transformers' ``EarlyStoppingCallback``), not before ``min_steps``; ``None``
            trains every step. On SST-2's 1000 traces (226 planned steps) it saved 2 steps of ``w``
            (best point at epoch 1) and none of ``p -> w`` (``benchmarks/results/better_together.md``).
        val_limit: decode at most this many validation records per evaluation point.
        device: ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
        dtype: ``"float32"`` or ``"bfloat16"`` (autocast for the forward/backward pass; LoRA weights
            and optimizer state stay float32). ``"auto"``: bfloat16 on CUDA and on CPUs with native
            bfloat16 (AVX512-BF16, AMX), else float32.
        shared_prefix: run the tokens all examples of a micro-batch start with (the system message)
            once per micro-batch: same loss and gradients, 2-3x fewer FLOPs on DSPy prompts.
        seed: seeds the LoRA initialisation and the order of examples.
        threads: torch CPU threads (default: ``$AUTOPROMPT_LLAMA_THREADS`` or all cores).
        progress: show a progress bar with the loss and the validation accuracy.

    Example:
        >>> tuner = LoRAFinetuner(epochs=2)                             # doctest: +SKIP
        >>> result = tuner.finetune(training_data, "runs/lora")         # doctest: +SKIP
        >>> lm = result.lm()    # the embedded model + adapter, run by llama.cpp
    """

    name = "lora"
    MAX_AUTO_EPOCHS = 30

    def __init__(
        self,
        *,
        base_model: str | Path | None = None,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
        top_layers: int | None = None,
        learning_rate: float = 3e-3,
        epochs: int | None = None,
        min_steps: int = 150,
        batch_size: int = 8,
        micro_batch_size: int = 8,
        max_length: int = 2048,
        max_steps: int | None = None,
        max_minutes: float | None = None,
        evals_per_epoch: int = 2,
        max_evals: int | None = 16,
        patience: int | None = 2,
        val_limit: int = 100,
        device: str = "auto",
        dtype: str = "auto",
        shared_prefix: bool = True,
        seed: int = 0,
        threads: int | None = None,
        progress: bool = True,
    ) -> None:
        self.base_model = Path(base_model) if base_model else None
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = list(target_modules)
        self.top_layers = top_layers
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.min_steps = min_steps
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.max_length = max_length
        self.max_steps = max_steps
        self.max_minutes = max_minutes
        self.evals_per_epoch = evals_per_epoch
        self.max_evals = max_evals
        self.patience = patience
        self.val_limit = val_limit
        self.device = device
        self.dtype = dtype
        self.shared_prefix = shared_prefix
        self.seed = seed
        self.threads = threads
        self.progress = progress
        bad = sorted(set(self.target_modules) - set(DEFAULT_TARGET_MODULES))
        if bad:
            raise FinetuneError(
                f"target_modules {bad} cannot be served by llama.cpp (q_proj/k_proj are stored permuted in "
                f"GGUF); choose from {list(DEFAULT_TARGET_MODULES)}"
            )
        if max_minutes is not None and (isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float))
                                        or max_minutes <= 0):
            raise FinetuneError(f"max_minutes must be a positive number or None, got {max_minutes!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise FinetuneError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if dtype not in ("auto", "float32", "bfloat16"):
            raise FinetuneError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
        for field, value in (("rank", rank), ("epochs", 1 if epochs is None else epochs), ("min_steps", min_steps),
                             ("max_evals", 1 if max_evals is None else max_evals), ("batch_size", batch_size),
                             ("micro_batch_size", micro_batch_size), ("evals_per_epoch", evals_per_epoch),
                             ("val_limit", val_limit), ("patience", 1 if patience is None else patience),
                             ("top_layers", 1 if top_layers is None else top_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise FinetuneError(f"{field} must be a positive integer, got {value!r}")

    def finetune(self, data: Any, output_dir: str | Path) -> FinetuneResult:
        """Train a LoRA on ``data.train``; write ``adapter.gguf``, ``peft/`` and ``finetune.json``.

        Raises:
            FinetuneError: the extra is not installed, or no training example fits ``max_length``.
        """
        require_finetune_extra()
        import torch
        from peft import get_peft_model
        from tqdm.auto import tqdm

        from autoprompt.store import atomic_write, dump_json
        from autoprompt.lms import smollm2_path

        if not self.progress:  # transformers' own bars (weight loading; GGUF de-quantization uses tqdm itself)
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

        tokenizer, model = load_base(base)
        train, too_long = _encode(tokenizer, data.train, self.max_length)
        val, _ = _encode(tokenizer, data.val, self.max_length)
        if not train:
            raise FinetuneError(
                f"all {len(data.train)} training examples are longer than max_length={self.max_length} tokens; "
                "raise max_length"
            )
        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        if device == "cuda" and not torch.cuda.is_available():
            raise FinetuneError("device='cuda' but torch sees no GPU; use device='auto' or 'cpu'")
        dtype = ("bfloat16" if device == "cuda" or _cpu_has_bf16() else "float32") if self.dtype == "auto" \
            else self.dtype
        model = get_peft_model(model, lora_config(rank=self.rank, alpha=self.alpha, dropout=self.dropout,
                                                  target_modules=self.target_modules, top_layers=self.top_layers,
                                                  blocks=model.config.num_hidden_layers, model_name=base.name)
                               ).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        steps_per_epoch = math.ceil(len(train) / self.batch_size)
        epochs = self.epochs or max(2, min(self.MAX_AUTO_EPOCHS, math.ceil(self.min_steps / steps_per_epoch)))
        total = self.max_steps or steps_per_epoch * epochs
        eval_every = max(1, steps_per_epoch // self.evals_per_epoch,
                         math.ceil(total / self.max_evals) if self.max_evals else 1) if val else 0
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        run = _Trainer(model=model, torch=torch, pad_id=pad_id, micro=self.micro_batch_size, device=device,
                       dtype=dtype, shared_prefix=self.shared_prefix)
        validator = _Validator(base=base, records=data.val[: self.val_limit], folder=out / "checkpoints",
                               threads=threads, alpha=self.alpha) if val else None
        rng = random.Random(self.seed)
        losses: list[float] = []
        evals: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        best_state: dict[str, Any] | None = None
        model.train()
        bar = tqdm(total=total, desc="fine-tune (LoRA)", unit="step", disable=not self.progress, leave=False)
        step = 0
        stale = 0  # validation points in a row that did not beat the best
        stopped_early = False
        out_of_time = False

        def validate() -> None:
            """Score the current step on the validation share; keep it if it is the best so far."""
            nonlocal best, best_state, stale, stopped_early
            assert validator is not None
            point = {"step": step, "epoch": round(step / steps_per_epoch, 2),
                     "train_loss": losses[-1], "val_loss": round(run.mean_loss(val), 5),
                     **validator.score(model, step)}
            evals.append(point)
            logger.info("step %d/%d: train loss %.4f, val loss %.4f, val accuracy %.3f", step, total,
                        losses[-1], point["val_loss"], point["val_accuracy"])
            if best is None or (point["val_accuracy"], -point["val_loss"]) > (best["val_accuracy"], -best["val_loss"]):
                best, stale = point, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
            else:
                stale += 1
                stopped_early = (self.patience is not None and stale >= self.patience and step < total
                                 and step >= self.min_steps)

        train_started = time.monotonic()
        while step < total and not stopped_early:
            for rows in _batches(train, self.batch_size, self.micro_batch_size, rng):
                loss = run.step_loss(rows, backward=True)
                if not math.isfinite(loss):
                    bar.close()
                    raise FinetuneError(
                        f"the training loss became {loss} at step {step + 1} of {total} (learning_rate="
                        f"{self.learning_rate}); lower learning_rate or use dtype='float32'"
                    )
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
                losses.append(round(loss, 5))
                step += 1
                bar.update(1)
                if validator is not None and (step % eval_every == 0 or step == total):
                    validate()
                elif validator is None and step % steps_per_epoch == 0:  # a line per epoch for logs without a bar
                    logger.info("step %d/%d: train loss %.4f (no validation records: the last step is kept)",
                                step, total, losses[-1])
                bar.set_postfix(loss=f"{losses[-1]:.4f}", **({"val_acc": f"{evals[-1]['val_accuracy']:.3f}"}
                                                             if evals else {}))
                out_of_time = self.max_minutes is not None and step < total and \
                    time.monotonic() - train_started >= 60 * self.max_minutes
                if step >= total or stopped_early or out_of_time:
                    break
            if out_of_time:
                if validator is not None and (not evals or evals[-1]["step"] != step):
                    validate()  # the steps since the last point count too
                break
        if out_of_time:
            logger.info("stopped at step %d/%d: the %.1f min budget (max_minutes) is spent", step, total,
                        self.max_minutes)
        if stopped_early:
            logger.info("early stop at step %d/%d: %d validation points without a better one (patience=%d)",
                        step, total, stale, self.patience)
        train_seconds = time.monotonic() - train_started
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state, strict=False)
        model.eval()
        model.save_pretrained(str(out / "peft"))
        adapter = write_lora_adapter(model, out / "adapter.gguf", alpha=self.alpha)
        if validator is not None:
            validator.cleanup()
        metrics = {
            "examples": len(train),
            "skipped_too_long": too_long,
            "val_examples": len(val),
            "steps": step,
            "planned_steps": total,
            "epochs": epochs,
            "stopped_early": stopped_early,
            "out_of_time": out_of_time,
            "first_loss": losses[0],
            "final_loss": losses[-1],
            "evals": evals,
            "best": best,
            "val_accuracy_base": validator.base_accuracy if validator is not None else None,
            "losses": losses,
            "device": device,
            "dtype": dtype,
            "threads": threads if device == "cpu" else None,
            "params": n_params,
            "trainable_params": sum(p.numel() for p in params),
            **run.throughput(train_seconds - (validator.seconds if validator else 0.0)),
            "validation_seconds": round(validator.seconds, 1) if validator else 0.0,
            "seconds": round(time.monotonic() - started, 1),
        }
        manifest = {
            "format": "autoprompt.finetune",
            "format_version": FINETUNE_FORMAT_VERSION,
            "autoprompt_version": __version__,
            "finetuner": self.name,
            "base_model": {"path": str(base), "sha256": file_sha256(base)},
            "adapter": adapter.name,
            "options": self.options(),
            "data": data.manifest,
            "metrics": metrics,
        }
        atomic_write(out / "finetune.json", dump_json(manifest))
        spec = f"local?lora={adapter.resolve()}" if self.base_model is None else \
            f"local:{base.resolve()}?lora={adapter.resolve()}"
        logger.info("fine-tuned %s on %d examples in %d steps (loss %.3f -> %.3f; kept step %s), %.0f s, "
                    "%.0f train tokens/s; serve with lm=%r", base.name, len(train), step, losses[0], losses[-1],
                    best["step"] if best else step, metrics["seconds"], metrics["tokens_per_second"], spec)
        return FinetuneResult(lm_spec=spec, output_dir=out, metrics=metrics, manifest=manifest)


def lora_config(*, rank: int, alpha: float, dropout: float = 0.0, target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
                top_layers: int | None = None, blocks: int | None = None, model_name: str = "the model") -> Any:
    """peft's ``LoraConfig`` for a causal LM: a LoRA on ``target_modules`` of every transformer block, or of the
    last ``top_layers`` of the model's ``blocks`` (peft's ``layers_to_transform``; the decoder's blocks are in
    its ``layers`` list). Shared by the finetuner and ``benchmarks/lora_speed.py``."""
    from peft import LoraConfig

    if top_layers is not None and (blocks is None or not 0 < top_layers <= blocks):
        raise FinetuneError(f"top_layers={top_layers} but {model_name} has {blocks} transformer blocks; "
                            f"choose 1..{blocks} or None (every block)")
    layers = None if top_layers is None else list(range(blocks - top_layers, blocks))
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      task_type="CAUSAL_LM", layers_to_transform=layers, layers_pattern="layers" if layers else None)


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


def _batches(rows: list[dict[str, list[int]]], batch_size: int, micro: int, rng: random.Random
             ) -> list[list[dict[str, list[int]]]]:
    """One epoch of batches: shuffled, then sorted by length inside windows of 16 batches, so that a
    micro-batch holds examples of similar length (little padding) while batches stay random."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i:i + window], key=lambda j: len(rows[j]["input_ids"]))
        batches += [[rows[j] for j in chunk[k:k + batch_size]] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class _Trainer:
    """Loss of micro-batches (left-padded, logits for the answer positions only) and token counts.

    With ``shared_prefix`` the tokens every example of a micro-batch starts with (DSPy's system
    message: ~160 of ~230 tokens for SST-2) go through the model once, and their keys and values
    are repeated for the rest of each example (as a KV cache that keeps its autograd graph): the same
    loss and gradients at a fraction of the FLOPs.
    """

    MIN_PREFIX = 16

    def __init__(self, *, model: Any, torch: Any, pad_id: int, micro: int, device: str, dtype: str,
                 shared_prefix: bool = True) -> None:
        self.model, self.torch, self.pad_id, self.micro, self.device = model, torch, pad_id, micro, device
        self.autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        self.shared_prefix = shared_prefix
        self.tokens = self.padded = self.computed = 0
        import inspect

        # transformers 5 names the KV cache argument `cache` (`past_key_values` is deprecated there)
        forward = inspect.signature(type(model.get_base_model()).forward).parameters
        self.cache_arg = "cache" if "cache" in forward else "past_key_values"

    @staticmethod
    def prefix_length(rows: list[dict[str, list[int]]]) -> int:
        """Tokens all ``rows`` start with, stopping before the first answer token of any of them."""
        first = rows[0]["input_ids"]
        n = min(next(i for i, t in enumerate(r["labels"]) if t != -100) for r in rows) - 1
        for r in rows[1:]:
            ids = r["input_ids"]
            n = min(n, next((i for i in range(n) if ids[i] != first[i]), n))
        return max(n, 0)

    def collate(self, rows: list[dict[str, list[int]]], start: int = 0, offset: int = 0) -> dict[str, Any]:
        """Left-padded batch of the tokens from ``start`` on, positions counted from ``offset``:
        every answer ends at the last position, so only the last few positions need logits (a
        49k-word vocabulary over every prompt token took ~10 GB on CPU)."""
        torch = self.torch
        width = max(len(r["input_ids"]) - start for r in rows)
        pads = [width - len(r["input_ids"]) + start for r in rows]
        batch = {
            "input_ids": [[self.pad_id] * n + r["input_ids"][start:] for n, r in zip(pads, rows)],
            "labels": [[-100] * n + r["labels"][start:] for n, r in zip(pads, rows)],
            "attention_mask": [[1] * offset + [0] * n + [1] * (len(r["input_ids"]) - start) for n, r in zip(pads, rows)],
            "position_ids": [[0] * n + list(range(offset, offset + len(r["input_ids"]) - start))
                             for n, r in zip(pads, rows)],
        }
        return {k: torch.tensor(v, device=self.device) for k, v in batch.items()}

    def summed_loss(self, rows: list[dict[str, list[int]]]) -> tuple[Any, int]:
        """Summed cross-entropy over the answer tokens of ``rows`` and the number of token positions run."""
        torch = self.torch
        shared = self.prefix_length(rows) if self.shared_prefix and len(rows) > 1 else 0
        cache = None
        if shared >= self.MIN_PREFIX:
            prefix = torch.tensor([rows[0]["input_ids"][:shared]], device=self.device)
            with self.autocast:
                out = self.model(input_ids=prefix, use_cache=True)
            cache = getattr(out, self.cache_arg)
            cache.batch_repeat_interleave(len(rows))
        else:
            shared = 0
        batch = self.collate(rows, start=shared, offset=shared)
        labels = batch["labels"]
        answer = int((labels != -100).sum(dim=1).max())
        width = labels.shape[1]
        extra = {} if cache is None else {
            self.cache_arg: cache, "cache_position": torch.arange(shared, shared + width, device=self.device)}
        with self.autocast:
            out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=batch["position_ids"], logits_to_keep=answer + 1, use_cache=cache is not None,
                             **extra)
        logits = out.logits[:, :-1, :]  # position t predicts token t + 1
        target = labels[:, -answer:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        return loss, shared + int(batch["input_ids"].numel())

    def step_loss(self, rows: list[dict[str, list[int]]], backward: bool) -> float:
        """Mean loss per answer token over ``rows``, run ``micro`` examples at a time (activations of a
        whole batch of ~300-token prompts took over 10 GB on CPU); gradients accumulate when ``backward``."""
        tokens = max(sum(sum(1 for t in r["labels"] if t != -100) for r in rows), 1)
        total = 0.0
        for i in range(0, len(rows), self.micro):
            part = rows[i:i + self.micro]
            loss, computed = self.summed_loss(part)
            if backward:
                (loss / tokens).backward()
                self.tokens += sum(len(r["input_ids"]) for r in part)
                self.padded += len(part) * max(len(r["input_ids"]) for r in part)
                self.computed += computed
            total += loss.item()
        return total / tokens

    def mean_loss(self, rows: list[dict[str, list[int]]]) -> float:
        self.model.eval()
        with self.torch.no_grad():
            value = self.step_loss(rows, backward=False)
        self.model.train()
        return value

    def throughput(self, seconds: float) -> dict[str, Any]:
        """Tokens trained on, the share of padding, the share of positions the shared prefix saved,
        and tokens (of the examples, as if each ran alone) per second of training."""
        return {
            "train_tokens": self.tokens,
            "padding_share": round(1 - self.tokens / self.padded, 4) if self.padded else 0.0,
            "computed_tokens": self.computed,
            "prefix_saving": round(1 - self.computed / self.padded, 4) if self.padded else 0.0,
            "train_seconds": round(seconds, 1),
            "tokens_per_second": round(self.tokens / seconds, 1) if seconds > 0 else None,
        }


class _Validator:
    """Validation accuracy by decoding held-out records with llama.cpp and the LoRA as an adapter:
    what the fine-tuned model will answer when served, not a proxy from the training framework."""

    def __init__(self, *, base: Path, records: list[dict[str, Any]], folder: Path, threads: int, alpha: float) -> None:
        self.base, self.records, self.folder, self.threads, self.alpha = base, records, folder, threads, alpha
        self.seconds = 0.0
        self.folder.mkdir(parents=True, exist_ok=True)
        self.base_accuracy = self._accuracy(None)

    def score(self, model: Any, step: int) -> dict[str, Any]:
        path = write_lora_adapter(model, self.folder / f"step-{step}.gguf", alpha=self.alpha)
        accuracy = self._accuracy(path)
        path.unlink()  # the kept checkpoint is written again as adapter.gguf
        return {"val_accuracy": accuracy}

    def _accuracy(self, adapter: Path | None) -> float:
        from autoprompt._parallel import ordered_map
        from autoprompt.lms import LlamaCppEngine

        started = time.monotonic()
        engine = LlamaCppEngine(self.base, lora_path=adapter, n_threads=self.threads)

        def right(record: dict[str, Any]) -> bool:
            messages = record["messages"]
            gold = _answer(messages[-1]["content"])
            schema = record.get("schema")
            params: dict[str, Any] = {"max_tokens": 64, "temperature": 0.0}
            if not isinstance(gold, str):  # a JSON answer (DSPy's JSONAdapter): decoded as served, with its grammar
                params["response_format"] = {"type": "json_object", **({"schema": schema} if schema else {})}
            out = engine.chat(messages[:-1], **params)
            return _answer(out["choices"][0]["message"].get("content") or "") == gold

        # training waits meanwhile: the decoding gets the cores, as many calls at once as the engine has copies
        correct = sum(ordered_map(right, self.records, engine.instances))
        engine.close()
        self.seconds += time.monotonic() - started
        return round(correct / len(self.records), 4) if self.records else 0.0

    def cleanup(self) -> None:
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def _answer(text: str) -> Any:
    """An answer compared as JSON when it parses (key order and spacing ignored), else as text.

    Example:
        >>> _answer('{"label": " Positive"}') == _answer('{"label":"positive"}')
        True
    """
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return " ".join(text.split()).lower()
    if isinstance(value, dict):
        return {k: (v.strip().lower() if isinstance(v, str) else v) for k, v in value.items()}
    return value


def _cpu_has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX): autocast then ran LoRA training
    2-3x faster than float32 here; emulated bfloat16 on older CPUs is not worth it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def load_base(base: Path) -> tuple[Any, Any]:
    """The tokenizer and float32 model of a GGUF file, for training; converted once, then loaded from a cache.

    transformers reads a GGUF file in Python (its metadata and vocabulary twice, a tensor-name map per
    layer): ~12 s of the ~15 s it takes for SmolLM2-135M on 2 cores (28 s on a slower machine), paid by
    every ``w`` step. The converted model (``model.safetensors``, ``config.json``, the tokenizer) is kept in
    ``$AUTOPROMPT_MODEL_CACHE`` (default ``~/.cache/autoprompt/models``) under the file's name, content hash
    and the transformers version, and loads in under a second with the same weights and tokens (a test
    compares). The folder is written under a temporary name and renamed, so a killed conversion leaves no
    half a model; a cache that does not load is converted again, with a warning; a cache that cannot be
    written only costs the next run the conversion.
    """
    import shutil

    require_finetune_extra()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprompt.store import dump_json

    root = model_cache_dir()
    key = hashlib.sha256(f"{file_sha256(base)} transformers {transformers.__version__}".encode()).hexdigest()[:16]
    folder = root / f"{base.stem}-{key}"
    if (folder / "model.safetensors").is_file():
        try:
            return (AutoTokenizer.from_pretrained(str(folder)),
                    AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32))
        except Exception as exc:  # noqa: BLE001 - any broken cache is converted again
            logger.warning("converted base model in %s does not load (%s); converting %s again", folder, exc, base.name)
            shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
    model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, dtype=torch.float32)
    tmp = root / f".{folder.name}.{os.getpid()}.tmp"
    try:
        from safetensors.torch import save_model

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are de-quantized float32: a plain checkpoint
        (tmp / "config.json").write_text(dump_json(config))
        save_model(model, str(tmp / "model.safetensors"))  # tied embeddings stored once
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, folder)
        logger.info("converted %s for training in %.1f s; cached in %s", base.name, time.monotonic() - started, folder)
    except OSError as exc:  # another process renamed its copy first, a read-only cache, a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "model.safetensors").is_file():
            logger.warning("could not cache the converted base model in %s (%s); the next run converts it again",
                           folder, exc)
    return tokenizer, model
