"""Where the time of one evaluated example goes: autoprompt (DSPy program, JSONAdapter, engine) against the
same chat calls sent raw to llama.cpp.

1. ``autoprompt``: :func:`autoprompt.evaluate.evaluate_program` on N test examples, LM cache off; every call
   the engine receives is recorded (messages and parameters, as DSPy built them). With the engine's
   defaults (the grammar checked on the 256 best tokens first), with ``fast_forward=True`` (the text the
   schema forces evaluated in one batch as a speculative draft), and with ``lazy_grammar=False``
   (llama-cpp-python's own chain: the grammar masks the vocabulary at every step). Forward passes (llama.cpp
   ``eval`` calls) are counted, and the answers with and without ``fast_forward`` compared example by example.
2. ``raw``: the recorded calls replayed with ``LlamaCppEngine.chat`` (llama-cpp-python's chat API, JSON
   schema -> grammar compiled per call, as it does by default).
3. ``raw, grammar compiled once``: the same calls with the grammar built once and passed as ``grammar=``.
4. A cProfile of (1), its cumulative time grouped by where it is spent.

5. Banking77 (77 labels, most of several tokens: ``card_arrival``), zero-shot, ``--banking-n`` test examples
   (a seeded, label-stratified sample): with and without ``fast_forward``.

Programs: the zero-shot program and one with 4 labelled demos (balanced). The first example of each side
is a warm-up (model load, prompt cache) and is not timed. Writes ``benchmarks/results/eval_cost.md``:

    .venv/bin/python benchmarks/eval_cost.py --n 100 --banking-n 40
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


def passes(engine) -> int:
    """Forward passes (llama.cpp ``eval`` calls) made by the engine's copies of the model so far."""
    return sum(getattr(llama, "evals", 0) for llama in engine._idle)


def timed_eval(program: dspy.Module, task, engine, n: int, threads: int = 1) -> tuple[float, list, list, int]:
    """Seconds per example, the calls the engine received, the predictions and the forward passes."""
    calls: list = []
    original = engine.chat

    def spy(messages, **params):
        calls.append((messages, dict(params)))
        return original(messages, **params)

    engine.chat = spy
    try:
        evaluate_program(program, task, "test", limit=threads, progress=False, threads=threads)  # warm-up
        calls.clear()
        before = passes(engine)
        started = time.perf_counter()
        ev = evaluate_program(program, task, "test", limit=n, progress=False, threads=threads)
        seconds = time.perf_counter() - started
    finally:
        del engine.chat
    return seconds / n, calls, [r["predicted"] for r in ev.records], passes(engine) - before


def _switch(engine, lazy: bool, fast_forward: bool) -> None:
    """Switch the engine's decoding (the model reloads on the next call)."""
    engine.close()
    engine.lazy_grammar, engine.fast_forward = lazy, fast_forward


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


def pass_sizes(program, task, engine, n: int) -> dict[str, tuple[int, float]]:
    """Forward passes of ``n`` examples by tokens evaluated at once: (passes per example, ms per pass)."""
    from autoprompt.lms._local import _llama_class

    cls, seen = _llama_class(), []
    original = cls.eval

    def timed(self, tokens):
        started = time.perf_counter()
        try:
            return original(self, tokens)
        finally:
            seen.append((len(tokens), time.perf_counter() - started))

    cls.eval = timed
    try:
        evaluate_program(program, task, "test", limit=n, progress=False, threads=1)
    finally:
        cls.eval = original
    groups: dict[str, list[float]] = {}
    for size, seconds in seen:
        key = "1" if size == 1 else "2-8" if size <= 8 else "9-64" if size <= 64 else "> 64"
        groups.setdefault(key, []).append(seconds)
    return {k: (len(v) / n, 1000 * statistics.fmean(v)) for k, v in sorted(groups.items())}


def batch_numerics(engine, messages: list, answer: str) -> list[tuple[int, float, bool]]:
    """The logits of each token of ``answer`` after the chat prompt ``messages``, evaluated one token at a time
    and all in one batch: (position, max |difference|, same argmax) per token."""
    import llama_cpp
    import numpy as np

    llama = engine.llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    # the prompt as llama-cpp-python renders it for create_chat_completion: the GGUF's chat template
    text = Jinja2ChatFormatter(llama.metadata["tokenizer.chat_template"], eos_token="", bos_token="")(
        messages=messages).prompt
    prompt = llama.tokenize(text.encode(), add_bos=False, special=True)
    tokens = llama.tokenize(answer.encode(), add_bos=False, special=False)

    def logits(i: int):
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, i), shape=(llama.n_vocab(),)).copy()

    llama.reset()
    llama.eval(prompt)
    alone = []
    for token in tokens:
        llama.eval([token])
        alone.append(logits(-1))
    llama.reset()
    llama.eval(prompt)
    llama.draft_pending = len(tokens) - 1  # every token's logits kept, as for a draft
    llama.eval(tokens)
    batched = [logits(k - len(tokens)) for k in range(len(tokens))]
    llama.reset()
    return [(k, float(np.abs(a - b).max()), int(a.argmax()) == int(b.argmax()))
            for k, (a, b) in enumerate(zip(alone, batched))]


def banking(engine, n: int) -> list[tuple[str, float, float, list]]:
    """Banking77 zero-shot on ``n`` stratified test examples, without and with ``fast_forward``."""
    task = autoprompt.load_task(str(ROOT / "tasks" / "banking77.py"))
    program = task.make_program()
    out = []
    for name, ff in (("off", False), ("on", True)):
        _switch(engine, True, ff)
        seconds, calls, predicted, forward = timed_eval(program, task, engine, n)
        out.append((name, seconds, forward / len(calls), predicted))
        print(f"banking77 fast_forward {name}: {seconds:.3f} s/example, {forward / len(calls):.2f} passes/call",
              flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--banking-n", type=int, default=40)
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
            _switch(engine, False, False)  # like for like with raw llama-cpp-python first
            masked, calls, _, masked_passes = timed_eval(program, task, engine, args.n)
            plain = raw(engine, calls, grammar_once=False)
            once = raw(engine, calls, grammar_once=True)
            _switch(engine, True, True)
            ff, _, ff_answers, ff_passes = timed_eval(program, task, engine, args.n)
            _switch(engine, True, False)  # then autoprompt as it runs by default
            ours, _, answers, ours_passes = timed_eval(program, task, engine, args.n)
            together, _, _, _ = timed_eval(program, task, engine, args.n, threads=engine.instances)
            same = sum(a == b for a, b in zip(answers, ff_answers))
            rows.append((name, ours, ff, masked, plain, once, len(calls) / args.n, together,
                         ours_passes / len(calls), ff_passes / len(calls), masked_passes / len(calls), same))
            profiles[name] = profile(program, task, args.n)
            if name == "zero-shot":
                sizes = {"default": pass_sizes(program, task, engine, args.n)}
                _switch(engine, True, True)
                sizes["fast_forward=True"] = pass_sizes(program, task, engine, args.n)
                _switch(engine, True, False)
            print(name, f"autoprompt {ours:.3f} s (fast-forward {ff:.3f}, full mask {masked:.3f}; "
                  f"{engine.instances} at once {together:.3f}), raw {plain:.3f} s, raw+grammar once {once:.3f} s; "
                  f"passes/call {ours_passes / len(calls):.2f}, fast-forward {ff_passes / len(calls):.2f}; "
                  f"same answers {same}/{args.n}", flush=True)
        bank = banking(engine, args.banking_n) if args.banking_n else []
        numerics = batch_numerics(engine, calls[0][0], '{"label": "positive"}')
    lines = ["# Evaluation cost per example: autoprompt vs raw llama.cpp", "",
             f"Command: `python benchmarks/eval_cost.py --n {args.n} --banking-n {args.banking_n}` (SST-2 test, "
             f"seeded sample of {args.n}; LM cache off; the embedded SmolLM2-135M on this machine's 2 cores; one process, one engine). Every column "
             "but the last sends one call at a time (`evaluate_program(threads=1)`, all threads to that call); the "
             f"last sends {engine.instances} at a time, each to its own copy of the model with its share of the "
             "threads (the default since the engine has copies: `LlamaCppEngine(instances=)`).", "",
             "| program | autoprompt s/example | with `fast_forward=True` | grammar masking the vocabulary "
             "(`lazy_grammar=False`) | raw llama.cpp s/example | raw, grammar compiled once | autoprompt / raw | "
             "like for like / raw | calls per example | "
             f"autoprompt, {engine.instances} calls at once: s/example | forward passes per call: autoprompt / "
             "fast-forward / masking | same answer with and without fast-forward |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, ours, ff, masked, plain, once, per, together, p_ours, p_ff, p_masked, same in rows:
        lines.append(f"| {name} | {ours:.3f} | {ff:.3f} | {masked:.3f} | {plain:.3f} | {once:.3f} | "
                     f"{ours / plain:.2f} | {masked / plain:.2f} | {per:.2f} | {together:.3f} | "
                     f"{p_ours:.2f} / {p_ff:.2f} / {p_masked:.2f} | {same} of {args.n} |")
    lines += ["", "*raw*: the calls autoprompt's engine received, replayed with llama-cpp-python's "
              "`create_chat_completion` (its own sampler chain). *like for like*: autoprompt with the same sampler "
              "chain as raw (`lazy_grammar=False`), i.e. DSPy's and autoprompt's own overhead. "
              "*forward passes*: llama.cpp `eval` calls (one evaluates the prompt's new tokens, or one generated "
              "token, or a generated token with the draft behind it)."]
    lines += ["", "Forward passes of the zero-shot program by tokens evaluated at once (the prompt's new tokens, one "
              "generated token, or a generated token and its draft); passes per example, milliseconds per pass:", "",
              "| tokens at once | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for key in sorted({k for v in sizes.values() for k in v}, key=lambda k: int(k.strip("> ").split("-")[0])):
        cells = [f"{v[key][0]:.2f} x {v[key][1]:.1f} ms" if key in v else "" for v in sizes.values()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "Why `fast_forward` changes some answers: the logits of the tokens of `{\"label\": \"positive\"}` "
              "after the first zero-shot prompt, evaluated one token at a time and in one batch (llama.cpp, the "
              "embedded Q4_1 model): the largest absolute difference per token "
              f"{', '.join(f'{d:.2f}' for _, d, _ in numerics)}; "
              f"same best token at {sum(same for _, _, same in numerics)} of {len(numerics)} positions."]
    if bank:
        (_, s_off, p_off, a_off), (_, s_on, p_on, a_on) = bank
        same = sum(a == b for a, b in zip(a_on, a_off))
        lines += ["", f"Banking77 (77 labels), zero-shot, {args.banking_n} test examples (seeded, label-stratified), "
                  "one call at a time:", "",
                  "| fast_forward | s/example | forward passes per call |", "|---|---:|---:|",
                  f"| off | {s_off:.3f} | {p_off:.2f} |", f"| on | {s_on:.3f} | {p_on:.2f} |", "",
                  f"Same answer with and without: {same} of {len(a_on)}."]
    for name, groups in profiles.items():
        lines += ["", f"Where autoprompt's time goes ({name}; cProfile cumulative time per example, profiler "
                  "overhead included):", "", "| part | s/example |", "|---|---:|"]
        lines += [f"| {label} | {sec:.4f} |" for label, sec in groups]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
