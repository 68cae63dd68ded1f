"""How to serve a LoRA fine-tuned embedded model: llama.cpp + GGUF adapter vs transformers + peft.

Takes a LoRAFinetuner output folder (adapter.gguf + peft/), renders the task program's prompts for
N dev examples (the exact JSONAdapter messages) and answers each greedily three ways: llama.cpp
without the adapter, llama.cpp with it, and transformers+peft. Prints and writes seconds per
example and how often the two fine-tuned paths give the same answer:

    .venv/bin/python benchmarks/lora_serving.py --adapter-dir RUN/steps/w/model --task tasks/sentiment.py --n 40
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import dspy  # noqa: E402

import autoprompt  # noqa: E402
from _common import write_markdown  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter-dir", required=True, help="a LoRAFinetuner output folder")
    parser.add_argument("--task", default=str(HERE.parent / "tasks" / "sentiment.py"))
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", default=str(HERE / "results" / "lora_serving.md"))
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from autoprompt.lms import smollm2_path

    task = autoprompt.load_task(args.task)
    program = task.make_program()
    adapter = autoprompt.CompactJSONAdapter()
    prompts = []
    for example in task.examples("dev", limit=args.n):
        (_, predictor), = program.named_predictors()
        prompts.append(adapter.format(predictor.signature, [], dict(example.inputs())))
    folder = Path(args.adapter_dir)
    answers: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for name, spec in (("llama.cpp, base model", "local"),
                       ("llama.cpp + GGUF LoRA adapter", f"local?lora={folder / 'adapter.gguf'}")):
        engine = autoprompt.build_lm(spec).engine
        engine.chat(prompts[0], max_tokens=args.max_tokens)  # load and warm up
        t0 = time.monotonic()
        answers[name] = [engine.chat(m, max_tokens=args.max_tokens)["choices"][0]["message"]["content"].strip()
                         for m in prompts]
        seconds[name] = (time.monotonic() - t0) / len(prompts)

    base = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
    model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(folder / "peft")).eval()
    name = "transformers + peft (float32, CPU)"
    t0 = time.monotonic()
    answers[name] = []
    for messages in prompts:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=args.max_tokens, do_sample=False)
        answers[name].append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    seconds[name] = (time.monotonic() - t0) / len(prompts)

    tuned = answers["llama.cpp + GGUF LoRA adapter"]
    rows = []
    for name in answers:
        same = sum(a == b for a, b in zip(answers[name], tuned))
        rows.append([name, f"{seconds[name]:.3f}", f"{same}/{len(prompts)}"])
        print(" | ".join(rows[-1]), flush=True)
    notes = (f"{len(prompts)} dev prompts of {Path(args.task).stem} (the zero-shot program's JSONAdapter messages), "
             f"greedy, max_tokens={args.max_tokens}, free text (no grammar) so all three paths decode alike; "
             f"adapter: {folder}. 'same answer' counts exact matches with the llama.cpp + adapter answer.")
    print(write_markdown(args.out, "Serving a LoRA fine-tuned SmolLM2-135M", notes,
                         ["path", "s / example", "same answer as llama.cpp + adapter"], rows))


if __name__ == "__main__":
    main()
