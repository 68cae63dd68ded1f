"""What repeating a long output type after every input costs: DSPy's JSONAdapter vs autoprompt's
CompactJSONAdapter on Banking77 (77 intents, ~2,000 characters of Literal after each input).

For each adapter and program (zero-shot; 4 demos retrieved per input from the train split, the search's
warm-start program), evaluates a seeded, label-stratified sample of the test split with the embedded
SmolLM2-135M, LM cache off, one call at a time after a warm-up call (model load, prompt cache). Records
seconds per example, accuracy, prompt tokens per call (as llama.cpp counts them: the whole prompt,
including the prefix it reuses from the previous call) and the characters of the last user message.
Each cell (task x program x adapter) is written to ``benchmarks/results/adapter_cost/`` when it finishes and a
rerun skips it; the table goes to ``benchmarks/results/adapter_cost.md``:

    .venv/bin/python benchmarks/adapter_cost.py --n 154
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from autoprompt._retrieval import Retriever, attach  # noqa: E402
from autoprompt.evaluate import evaluate_program  # noqa: E402
from autoprompt.usage import Meter  # noqa: E402

OUT = HERE / "results" / "adapter_cost.md"
CELLS = HERE / "results" / "adapter_cost"
ADAPTERS = {"dspy JSONAdapter": dspy.JSONAdapter, "autoprompt CompactJSONAdapter": autoprompt.CompactJSONAdapter}
PROGRAMS = ("zero-shot", "4 retrieved demos")


def make_program(task, kind: str, train: list) -> dspy.Module:
    program = task.make_program()
    if kind == "4 retrieved demos":
        for _, predictor in program.named_predictors():
            fields = predictor.signature.fields
            pool = [{k: v for k, v in ex.items() if k in fields} for ex in train]
            attach(predictor, Retriever(pool, list(predictor.signature.input_fields), 4))
    return program


def run_cell(task, kind: str, adapter_name: str, n: int) -> dict:
    train = task.examples("train")
    program = make_program(task, kind, train)
    adapter = ADAPTERS[adapter_name]()
    lm = autoprompt.build_lm("local", cache=False)
    example = task.examples("test", limit=n)[0]
    with dspy.context(lm=lm, adapter=adapter):
        program(**example.inputs())  # warm-up: model load, first prompt
        user = adapter.format(program.predictors()[0].signature, [], example.inputs())[-1]["content"]
        meter = Meter()
        with dspy.context(usage_tracker=meter):
            started = time.monotonic()
            ev = evaluate_program(program, task, "test", limit=n, progress=False, threads=1)
            seconds = time.monotonic() - started
    return {"task": task.name, "program": kind, "adapter": adapter_name, "n": ev.n, "accuracy": ev.score,
            "parse_failures": ev.parse_failures, "errors": ev.errors, "s_per_example": seconds / ev.n,
            "prompt_tokens_per_call": meter.prompt_tokens / max(meter.calls, 1), "calls": meter.calls,
            "user_message_chars": len(user)}


def report(n: int) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(CELLS.glob("*.json"))]
    lines = [
        "# Repeating a long output type after every input: DSPy's JSONAdapter vs CompactJSONAdapter",
        "",
        f"Command: `python benchmarks/adapter_cost.py --n {n}` (test split, seeded label-stratified sample; the "
        "embedded SmolLM2-135M on this machine's 2 cores; LM cache off; one call at a time after one warm-up "
        "call). *prompt tokens/call* is the whole prompt as llama.cpp counts it, including the prefix it "
        "reuses from the previous call (the system message); *user msg chars*: the last user message "
        "(input + output requirements).",
        "",
        "| task | program | adapter | n | accuracy % | s/example | prompt tokens/call | user msg chars |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['program']} | {r['adapter']} | {r['n']} | {100 * r['accuracy']:.1f} | "
                     f"{r['s_per_example']:.3f} | {r['prompt_tokens_per_call']:.0f} | {r['user_message_chars']} |")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=154, help="test rows (Banking77: 154 = 2 per intent)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table from the cells")
    args = parser.parse_args()
    if not args.report:
        task = autoprompt.load_task(ROOT / "tasks" / "banking77.py")
        CELLS.mkdir(parents=True, exist_ok=True)
        for kind in PROGRAMS:
            for name in ADAPTERS:
                path = CELLS / f"{task.name}-n{args.n}-{kind.replace(' ', '_')}-{name.split()[1]}.json"
                if path.exists():
                    continue
                cell = run_cell(task, kind, name, args.n)
                path.write_text(json.dumps(cell, indent=2, sort_keys=True) + "\n")
                print(json.dumps(cell), flush=True)
    report(args.n)


if __name__ == "__main__":
    main()
