"""LoRA training speed on this machine against its FLOP bound (issue 8, item 3).

Measures, on SST-2 training prompts of the zero-shot sentiment program (DSPy's JSONAdapter, ~230
tokens each, ~160 of them the shared system message), the training throughput of
``autoprompt.finetune._lora._Trainer`` (forward + backward of SmolLM2-135M with a rank-8 LoRA on
every linear layer) for micro-batch sizes, float32 vs bfloat16 autocast, and with / without running
the shared prompt prefix once per micro-batch. The machine's bound is a timed large matmul in each
dtype on the same threads; a training token costs about 6 x params FLOPs (forward 2, backward 4).
Writes ``benchmarks/results/lora_speed.json`` (one cell per configuration, written as it finishes;
a rerun skips finished cells) and ``lora_speed.md``:

    .venv/bin/python benchmarks/lora_speed.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import write_markdown  # noqa: E402

RESULTS = HERE / "results"
OUT = RESULTS / "lora_speed.json"
EXAMPLES = 96
ROUNDS = 3


def matmul_peak(torch, dtype, threads: int, n: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (the machine's practical bound)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - started)


def main() -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import autoprompt
    from autoprompt.export import compile_training_data
    from autoprompt.finetune._lora import _encode, _Trainer, lora_config
    from autoprompt.lms import smollm2_path

    threads = int(os.environ.get("AUTOPROMPT_LLAMA_THREADS", 0)) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    cells = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name, dtype in (("peak float32", torch.float32), ("peak bfloat16", torch.bfloat16)):
        if name not in cells:
            cells[name] = {"flops": matmul_peak(torch, dtype, threads), "threads": threads}
            OUT.write_text(json.dumps(cells, indent=1, sort_keys=True))

    task = autoprompt.load_task(str(HERE.parent / "tasks" / "sentiment.py"))
    data = compile_training_data(task.make_program(), task, answers="gold", limit=EXAMPLES, progress=False)
    base = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
    rows, _ = _encode(tokenizer, data.train, 768)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, dtype=torch.float32)
    model = get_peft_model(model, lora_config(rank=8, alpha=16))
    params = sum(p.numel() for p in model.parameters())
    # the embedding is a lookup and the tied output layer runs on the answer positions only: the
    # matmuls of a token are those of the other weights (2 FLOPs each forward, 2 backward for the
    # activations' gradient; frozen weights get no weight gradient)
    cells["model"] = {"params": params, "embedding_params": model.get_input_embeddings().weight.numel()}
    OUT.write_text(json.dumps(cells, indent=1, sort_keys=True))
    model.train()
    for micro in (4, 8, 16):
        for shared in (False, True):
            for dtype in ("float32", "bfloat16"):
                key = f"micro {micro}, {'shared prefix' if shared else 'whole prompts'}, {dtype}"
                if key in cells:
                    continue
                trainer = _Trainer(model=model, torch=torch, pad_id=tokenizer.eos_token_id, micro=micro,
                                   device="cpu", dtype=dtype, shared_prefix=shared)
                trainer.step_loss(rows[:micro], backward=True)  # warm-up
                trainer.tokens = trainer.padded = trainer.computed = 0
                started = time.perf_counter()
                for i in range(micro, len(rows), 16):
                    trainer.step_loss(rows[i:i + 16], backward=True)
                seconds = time.perf_counter() - started
                model.zero_grad()
                peak = cells[f"peak {dtype}"]["flops"]
                cells[key] = {
                    **trainer.throughput(seconds), "params": params, "micro": micro, "shared_prefix": shared,
                    "dtype": dtype, "flops_per_s": 6 * params * trainer.computed / seconds,
                    "share_of_peak": 6 * params * trainer.computed / seconds / peak,
                }
                OUT.write_text(json.dumps(cells, indent=1, sort_keys=True))
                print(key, round(cells[key]["tokens_per_second"]), "tokens/s", flush=True)

    # LoRA on the upper blocks only (``top_layers``): the backward pass stops at the lowest adapted block.
    # This machine's speed drifts by 2x over minutes (a shared VM), so every configuration, every block
    # included, runs in the same process, ROUNDS times round-robin, and the median of its rounds is reported
    blocks = model.config.num_hidden_layers
    tops: list[int | None] = [None, 15, 10, 6]
    top_key = f"top layers (micro 8, shared prefix, bfloat16, {ROUNDS} rounds round-robin)"
    if top_key not in cells:
        tuned = {}
        for top in tops:
            torch.manual_seed(0)
            base_model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name,
                                                              dtype=torch.float32)
            tuned[top] = get_peft_model(base_model, lora_config(rank=8, alpha=16, top_layers=top, blocks=blocks))
            tuned[top].train()
        speeds: dict[str, list[float]] = {str(top): [] for top in tops}
        for _ in range(ROUNDS):
            for top in tops:
                trainer = _Trainer(model=tuned[top], torch=torch, pad_id=tokenizer.eos_token_id, micro=8,
                                   device="cpu", dtype="bfloat16", shared_prefix=True)
                trainer.step_loss(rows[:8], backward=True)  # warm-up
                trainer.tokens = trainer.padded = trainer.computed = 0
                started = time.perf_counter()
                for i in range(8, len(rows), 16):
                    trainer.step_loss(rows[i:i + 16], backward=True)
                speeds[str(top)].append(round(trainer.tokens / (time.perf_counter() - started), 1))
                tuned[top].zero_grad()
                print(f"top layers {top or 'all'}: {speeds[str(top)][-1]:.0f} tokens/s", flush=True)
        cells[top_key] = {"blocks": blocks, "tokens_per_second": speeds, "trainable_params": {
            str(top): sum(p.numel() for p in m.parameters() if p.requires_grad) for top, m in tuned.items()}}
        OUT.write_text(json.dumps(cells, indent=1, sort_keys=True))

    header = ["configuration", "tokens/s", "computed tokens", "padding", "6 x params x computed / s",
              "matmul FLOP/s (4 x non-embedding params x computed)", "share of matmul peak"]
    rows_md = []
    matmul_params = cells["model"]["params"] - cells["model"]["embedding_params"]
    runs = [(k, c) for k, c in cells.items() if not k.startswith(("peak", "top layers")) and k != "model"]
    for key, c in sorted(runs, key=lambda kc: (kc[1]["micro"], kc[1]["shared_prefix"], kc[1]["dtype"] == "bfloat16")):
        real = 4 * matmul_params * c["computed_tokens"] / c["train_seconds"]
        peak = cells["peak " + c["dtype"]]["flops"]
        rows_md.append([key, f"{c['tokens_per_second']:.0f}", str(c["computed_tokens"]),
                        f"{100 * c['padding_share']:.1f}%", f"{c['flops_per_s'] / 1e9:.0f} G", f"{real / 1e9:.0f} G",
                        f"{100 * real / peak:.0f}%"])
    notes = (
        f"Machine: {cells['peak float32']['threads']} threads; matmul peak {cells['peak float32']['flops'] / 1e9:.0f} GFLOP/s float32, "
        f"{cells['peak bfloat16']['flops'] / 1e9:.0f} GFLOP/s bfloat16 (2048 x 2048). Model: SmolLM2-135M "
        f"({params / 1e6:.1f} M parameters with a rank-8 LoRA on every linear layer). {len(rows)} SST-2 training "
        "prompts of the zero-shot program (gold answers), batches of 16. tokens/s counts each example's tokens as "
        "if it ran alone; 'computed tokens' are the positions the model actually ran (the shared prefix once per "
        "micro-batch). The issue's bound, 6 x params FLOPs per token, overstates the work of LoRA training: "
        f"{cells['model']['embedding_params'] / 1e6:.1f} M of the parameters are the embedding (a lookup; the tied "
        "output layer runs on the answer positions only) and the frozen weights get no weight gradient, so a token "
        "costs about 4 x the other parameters (forward 2, backward 2); the last two columns use that count "
        "against a 2048 x 2048 matmul in the same dtype. The LoRA finetuner's defaults: `micro_batch_size=8` "
        "(= `batch_size`; 16 is 15% faster but halves the optimizer steps on small data), `shared_prefix=True`, "
        "`dtype='auto'` (bfloat16 on CPUs with native bfloat16, as this one): 3.6x the tokens/s of float32 whole "
        "prompts at micro-batch 4 (the previous recipe)."
    )
    if top_key in cells:
        c = cells[top_key]
        median = {top: statistics.median(v) for top, v in c["tokens_per_second"].items()}
        notes += (
            "\n\nLoRA on the upper blocks only (`LoRAFinetuner(top_layers=N)`), micro-batch 8, shared prefix, "
            f"bfloat16: every configuration in one process, {ROUNDS} rounds round-robin (this VM's speed drifts), "
            "median tokens/s (the rounds beside it). Gradients stop at the lowest adapted block, so a token costs "
            "about (2 + 2 x N / blocks) x the non-embedding parameters instead of 4 x; 'bound' is that count's "
            "speed-up over every block.\n\n"
            "| LoRA on | trainable params | tokens/s (rounds) | speed-up | bound |\n|---|---|---|---|---|\n" + "".join(
                f"| {'every block' if top == 'None' else 'top ' + top} of {c['blocks']} "
                f"| {c['trainable_params'][top] / 1e6:.2f} M | {median[top]:.0f} "
                f"({', '.join(f'{v:.0f}' for v in c['tokens_per_second'][top])}) "
                f"| {median[top] / median['None']:.2f}x "
                f"| {4 / (2 + 2 * (c['blocks'] if top == 'None' else int(top)) / c['blocks']):.2f}x |\n"
                for top in sorted(c["tokens_per_second"], key=lambda t: -(c["blocks"] if t == "None" else int(t)))))
    write_markdown(RESULTS / "lora_speed.md", "LoRA training speed on CPU vs the FLOP bound", notes, header, rows_md)


if __name__ == "__main__":
    main()
