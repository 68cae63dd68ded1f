"""Where the time of one evaluated example goes: autoprompt (DSPy program, JSONAdapter, engine) against the
same chat calls sent raw to llama.cpp.

1. ``autoprompt``: :func:`autoprompt.evaluate.evaluate_program` on N test examples, LM cache off; every call
   the engine receives is recorded (messages and parameters, as DSPy built them). Once with the engine's
   default greedy decoding (the grammar checked on the 256 best tokens first) and once with
   ``lazy_grammar=False`` (llama-cpp-python's own chain: the grammar masks the vocabulary at every step).
2. ``raw``: the recorded calls replayed with ``LlamaCppEngine.chat`` (llama-cpp-python's chat API, JSON
   schema -> grammar compiled per call, as it does by default).
3. ``raw, grammar compiled once``: the same calls with the grammar built once and passed as ``grammar=``.
4. A cProfile of (1), its cumulative time grouped by where it is spent.

Programs: the zero-shot program and one with 4 labelled demos (balanced). The first example of each side
is a warm-up (model load, prompt cache) and is not timed. Writes ``benchmarks/results/eval_cost.md``:

    .venv/bin/python benchmarks/eval_cost.py --n 100
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import statistics
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
from autoprompt.optimizers.optuna import stratified_sample  # noqa: E402

OUT = HERE / "results" / "eval_cost.md"
PROBES = (  # (label, file substring, function): cumulative time of each, per example
    ("whole evaluation", "autoprompt/evaluate.py", "evaluate_program"),
    ("llama-cpp-python create_chat_completion (all of llama.cpp)", "llama_cpp/llama.py", "create_chat_completion"),
    ("  of which: JSON schema -> grammar", "llama_cpp/llama_grammar.py", "from_json_schema"),
    ("  of which: prompt evaluation (llama eval)", "llama_cpp/llama.py", "eval"),
    ("  of which: sampling", "llama_cpp/llama.py", "sample"),
    ("DSPy JSONAdapter.format", "dspy/adapters", "format"),
    ("DSPy JSONAdapter.parse", "dspy/adapters/json_adapter.py", "parse"),
    ("DSPy cache lookups", "dspy/clients/cache.py", "get"),
    ("autoprompt engine request conversion", "autoprompt/lms/_local.py", "_complete"),
)


def timed_eval(program: dspy.Module, task, engine, n: int, threads: int = 1) -> tuple[float, list]:
    calls: list = []
    original = engine.chat

    def spy(messages, **params):
        calls.append((messages, dict(params)))
        return original(messages, **params)

    engine.chat = spy
    try:
        evaluate_program(program, task, "test", limit=threads, progress=False, threads=threads)  # warm-up
        calls.clear()
        started = time.perf_counter()
        evaluate_program(program, task, "test", limit=n, progress=False, threads=threads)
        seconds = time.perf_counter() - started
    finally:
        del engine.chat
    return seconds / n, calls


def _lazy(engine, on: bool) -> None:
    """Switch the engine's greedy decoding under a grammar (the model reloads on the next call)."""
    engine.close()
    engine.lazy_grammar = on


def raw(engine, calls: list, grammar_once: bool) -> float:
    from llama_cpp import LlamaGrammar

    grammars: dict[str, object] = {}
    llama = engine.llama
    started = time.perf_counter()
    for messages, params in calls:
        params = dict(params)
        fmt = params.get("response_format")
        if grammar_once and fmt and fmt.get("schema") is not None:
            key = json.dumps(fmt["schema"], sort_keys=True)
            if key not in grammars:
                grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
            params.pop("response_format")
            params["grammar"] = grammars[key]
        llama.create_chat_completion(messages=messages, **params)
    return (time.perf_counter() - started) / len(calls)


def profile(program, task, n: int) -> list[tuple[str, float]]:
    profiler = cProfile.Profile()
    profiler.enable()
    evaluate_program(program, task, "test", limit=n, progress=False, threads=1)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    out = []
    for label, where, function in PROBES:
        # the outermost matching entry per function (recursive calls are counted once by cProfile's ct)
        ct = max((v[3] for (f, _, name), v in stats.items() if where in f and name == function), default=0.0)
        out.append((label, ct / n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    autoprompt.configure_cache(enabled=False)
    task = autoprompt.load_task(str(ROOT / "tasks" / "sentiment.py"))
    lm = build_lm("local", cache=False)
    engine = lm.engine
    zero = task.make_program()
    demos = task.make_program()
    fields = set(task.signature.fields)
    sample = stratified_sample(task.examples("train", limit=200), 4, task.label_field, random.Random(0))
    demos.predictors()[0].demos = [dspy.Example({k: v for k, v in ex.items() if k in fields}) for ex in sample]
    rows = []
    profiles = {}
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        for name, program in (("zero-shot", zero), ("4 demos", demos)):
            _lazy(engine, False)  # like for like with raw llama-cpp-python first
            masked, calls = timed_eval(program, task, engine, args.n)
            plain = raw(engine, calls, grammar_once=False)
            once = raw(engine, calls, grammar_once=True)
            _lazy(engine, True)  # then autoprompt as it runs by default
            ours, _ = timed_eval(program, task, engine, args.n)
            together, _ = timed_eval(program, task, engine, args.n, threads=engine.instances)
            rows.append((name, ours, masked, plain, once, len(calls) / args.n, together))
            profiles[name] = profile(program, task, args.n)
            print(name, f"autoprompt {ours:.3f} s (full mask {masked:.3f}; {engine.instances} at once "
                  f"{together:.3f}), raw {plain:.3f} s, raw+grammar once {once:.3f} s", flush=True)
    lines = ["# Evaluation cost per example: autoprompt vs raw llama.cpp", "",
             f"Command: `python benchmarks/eval_cost.py --n {args.n}` (SST-2 test, seeded sample of {args.n}; LM "
             "cache off; the embedded SmolLM2-135M on this machine's 2 cores; one process, one engine). Every column "
             "but the last sends one call at a time (`evaluate_program(threads=1)`, all threads to that call); the "
             f"last sends {engine.instances} at a time, each to its own copy of the model with its share of the "
             "threads (the default since the engine has copies: `LlamaCppEngine(instances=)`).", "",
             "| program | autoprompt s/example | autoprompt, grammar masking the vocabulary (`lazy_grammar=False`) | "
             "raw llama.cpp s/example | raw, grammar compiled once | autoprompt / raw | same, like for like | "
             f"calls per example | autoprompt, {engine.instances} calls at once: s/example |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, ours, masked, plain, once, per, together in rows:
        lines.append(f"| {name} | {ours:.3f} | {masked:.3f} | {plain:.3f} | {once:.3f} | {ours / plain:.2f} | "
                     f"{masked / plain:.2f} | {per:.2f} | {together:.3f} |")
    lines += ["", "*raw*: the calls autoprompt's engine received, replayed with llama-cpp-python's "
              "`create_chat_completion` (its own sampler chain). *like for like*: autoprompt with the same sampler "
              "chain as raw (`lazy_grammar=False`), i.e. DSPy's and autoprompt's own overhead."]
    for name, groups in profiles.items():
        lines += ["", f"Where autoprompt's time goes ({name}; cProfile cumulative time per example, profiler "
                  "overhead included):", "", "| part | s/example |", "|---|---:|"]
        lines += [f"| {label} | {sec:.4f} |" for label, sec in groups]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
