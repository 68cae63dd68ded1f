"""The catalogue of bad input through the CLI: every user mistake is one line on stderr naming the thing and the
fix, exit code 2, no traceback. A new mistake found in the field gets a row here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import TASKS

SENTIMENT = TASKS / "sentiment.py"


def _task_file(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


GOOD_HEAD = """
    from typing import Literal
    import dspy, autoprompt

    class S(dspy.Signature):
        text: str = dspy.InputField()
        label: Literal["positive", "negative"] = dspy.OutputField()

    ROWS = [{"text": "good film", "label": "positive"}, {"text": "dull film", "label": "negative"}] * 3
"""


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Broken task files, data files, prompt files and run folders, made once for the catalogue."""
    d = tmp_path_factory.mktemp("bad")
    files = {
        "syntax": _task_file(d, "syntax", "def make_task(:\n"),
        "no_task": _task_file(d, "no_task", "x = 1\n"),
        "raises": _task_file(d, "raises", GOOD_HEAD + """
    def make_task(seed=0):
        raise ValueError(f"seed must be a number, got {seed!r}")
"""),
        "prepare": _task_file(d, "prepare", GOOD_HEAD + """
    def boom(row):
        raise KeyError("no column 'txt'")

    task = autoprompt.Task(name="p", program=S, train=ROWS, dev=ROWS, test=ROWS, prepare=boom)
"""),
        "metric": _task_file(d, "metric", GOOD_HEAD + """
    def metric(example, prediction, trace=None):
        return 1 / 0

    task = autoprompt.Task(name="m", program=S, train=ROWS, dev=ROWS, test=ROWS, metric=metric)
"""),
        "no_label": _task_file(d, "no_label", GOOD_HEAD + """
    task = autoprompt.Task(name="n", program=S, train=[{"text": "x"}] * 3, dev=[{"text": "x"}] * 3)
"""),
    }
    files["no_test"] = _task_file(d, "no_test", GOOD_HEAD + """
    task = autoprompt.Task(name="nt", program=S, train=ROWS, dev=ROWS)
""")
    (d / "empty").mkdir()
    (d / "empty" / "train.jsonl").write_text("")
    (d / "empty" / "dev.jsonl").write_text("")
    (d / "broken").mkdir()
    (d / "broken" / "train.jsonl").write_text('{"text": "a", "label": "positive"}\n{"text": \n')
    (d / "broken" / "dev.jsonl").write_text('{"text": "a", "label": "positive"}\n')
    files["empty_data"] = _task_file(d, "empty_data", GOOD_HEAD + f"""
    task = autoprompt.Task(name="e", program=S, train="{d / 'empty' / 'train.jsonl'}",
                           dev="{d / 'empty' / 'dev.jsonl'}")
""")
    files["broken_data"] = _task_file(d, "broken_data", GOOD_HEAD + f"""
    task = autoprompt.Task(name="b", program=S, train="{d / 'broken' / 'train.jsonl'}",
                           dev="{d / 'broken' / 'dev.jsonl'}")
""")
    (d / "not_prompt.json").write_text('{"hello": 1}')
    (d / "not_json.json").write_text("{")
    (d / "future_prompt.json").write_text(json.dumps({"format": "autoprompt.prompt", "format_version": 99}))
    (d / "run_damaged").mkdir()
    (d / "run_damaged" / "config.json").write_text('{"format": "autoprompt.run", "format_')
    (d / "run_other").mkdir()
    (d / "run_other" / "config.json").write_text(json.dumps({"format": "autoprompt.run", "format_version": 7}))
    (d / "plain_folder").mkdir()
    return d, files


# (id, argv with {d}/{files[...]} placeholders, words the one line must hold)
CATALOGUE = [
    # task files
    ("task missing", ["evaluate", "{d}/nope.py"], ["does not exist"]),
    ("task syntax error", ["evaluate", "{syntax}"], ["importing the task module failed", "SyntaxError"]),
    ("task defines none", ["evaluate", "{no_task}"], ["does not define a task", "make_task"]),
    ("make_task raises", ["evaluate", "{raises}"], ["make_task", "seed must be a number"]),
    ("task option type", ["evaluate", str(SENTIMENT), "--task-option", "seed=abc"], ["make_task", "seed"]),
    ("task option shape", ["evaluate", str(SENTIMENT), "--task-option", "seed"], ["--task-option", "key=value"]),
    ("prepare raises", ["evaluate", "{prepare}", "--split", "dev"], ["prepare", "no column"]),
    ("metric raises", ["evaluate", "{metric}", "--split", "dev", "--limit", "1"], ["metric", "ZeroDivisionError"]),
    ("label column missing", ["evaluate", "{no_label}", "--split", "dev"], ["label"]),
    # data
    ("empty split", ["evaluate", "{empty_data}", "--split", "dev"], ["dev.jsonl", "empty"]),
    ("malformed data", ["optimize", "{broken_data}", "--optimizer", "labeled"], ["train.jsonl"]),
    # options
    ("unknown optimizer", ["optimize", str(SENTIMENT), "--optimizer", "nope"], ["nope", "optuna"]),
    ("unknown option", ["optimize", str(SENTIMENT), "--option", "n_trialz=3"], ["n_trialz", "n_trials"]),
    ("option type", ["optimize", str(SENTIMENT), "--option", "n_trials=abc"], ["n_trials", "int"]),
    ("bad strategy", ["better-together", str(SENTIMENT), "--strategy", "p -> x"], ["p -> x", "'p'"]),
    ("bad data option", ["better-together", str(SENTIMENT), "--data-option", "max_trace=5"], ["max_trace"]),
    ("data option range", ["better-together", str(SENTIMENT), "--data-option", "extra_rounds=-1"],
     ["extra_rounds", ">= 0", "-1"]),
    ("data option attempts", ["better-together", str(SENTIMENT), "--data-option", "max_attempts=0"],
     ["max_attempts", "positive integer", "0"]),
    ("data option share", ["better-together", str(SENTIMENT), "--data-option", "val_fraction=1.5",
                           "--data-option", "min_label_share=0.1"], ["val_fraction", "[0, 1)"]),
    ("rare-label share", ["better-together", str(SENTIMENT), "--data-option", "min_label_share=2"],
     ["min_label_share", "[0, 1]"]),
    ("many-label share", ["better-together", str(SENTIMENT), "--data-option", "max_label_share=-0.5"],
     ["max_label_share", "[0, 1]", "-0.5"]),
    ("retry calibration strength", ["better-together", str(SENTIMENT), "--data-option", "retry_calibration=3"],
     ["retry_calibration", "[0, 1]", "3"]),
    ("bad finetune option", ["better-together", str(SENTIMENT), "--finetune-option", "rnk=4"], ["rnk", "rank"]),
    ("unknown flag", ["optimize", str(SENTIMENT), "--dev-limt", "5"], ["--dev-limt"]),
    # prompt files
    ("prompt missing", ["evaluate", str(SENTIMENT), "--prompt", "{d}/none.json"], ["none.json", "no such"]),
    ("prompt not json", ["evaluate", str(SENTIMENT), "--prompt", "{d}/not_json.json"], ["not valid JSON"]),
    ("not a prompt", ["evaluate", str(SENTIMENT), "--prompt", "{d}/not_prompt.json"], ["not an autoprompt prompt"]),
    ("prompt version", ["evaluate", str(SENTIMENT), "--prompt", "{d}/future_prompt.json"], ["format_version", "99"]),
    # run folders
    ("resume no run", ["optimize", str(SENTIMENT), "--resume", "--run-dir", "{d}/plain_folder"], ["no config.json"]),
    ("resume no dir", ["optimize", str(SENTIMENT), "--resume"], ["--run-dir"]),
    ("report no run", ["report", "{d}/plain_folder"], ["not a run directory"]),
    ("export no run", ["export", "{d}/plain_folder"], ["not a run directory"]),
    ("damaged run", ["report", "{d}/run_damaged"], ["config.json", "damaged"]),
    ("run of another version", ["export-data", "{d}/run_other", "-o", "{d}/x"], ["version 7"]),
    # LM strings
    ("gguf missing", ["evaluate", str(SENTIMENT), "--lm", "local:/no/such.gguf"], ["/no/such.gguf", "does not exist"]),
    ("adapter missing", ["evaluate", str(SENTIMENT), "--lm", "local?lora=/no/a.gguf"], ["/no/a.gguf"]),
    ("key variable unset", ["evaluate", str(SENTIMENT), "--lm", "openai/gpt-4o-mini", "--api-key-env",
                            "AUTOPROMPT_NO_SUCH_VAR"], ["AUTOPROMPT_NO_SUCH_VAR", "not set"]),
    # decide
    ("decide without a test split", ["decide", "{no_test}"], ["has no test split", "test="]),
    ("decide negative price", ["decide", str(SENTIMENT), "--price-input", "-1"], ["price input", "non-negative"]),
    ("decide data size", ["decide", str(SENTIMENT), "--data-sizes", "0"], ["--data-sizes", "positive integer"]),
    ("decide reuse no run", ["decide", str(SENTIMENT), "--reuse", "{d}/plain_folder"], ["no config.json"]),
    ("decide bad finetune option", ["decide", str(SENTIMENT), "--finetune-option", "epochz=2"], ["epochz", "epochs"]),
    ("decide bad search option", ["decide", str(SENTIMENT), "--option", "retrieved_demoz=false"],
     ["retrieved_demoz", "retrieved_demos"]),
    ("decide search option type", ["decide", str(SENTIMENT), "--option", "calibrate=3"], ["calibrate", "bool"]),
    ("w on a remote LM", ["better-together", str(SENTIMENT), "--lm", "openai/gpt-4o-mini", "--strategy", "w",
                          "--finetuner", "lora"], ["finetuner"]),
]


@pytest.mark.parametrize("argv,words", [pytest.param(a, w, id=i) for i, a, w in CATALOGUE])
def test_bad_input_is_one_line_and_exit_2(argv, words, bad, tmp_path):
    d, files = bad
    _one_line_exit_2([a.format(d=d, **{k: str(v) for k, v in files.items()}) for a in argv], words, tmp_path)


@pytest.mark.parametrize("variable,value,words", [
    ("AUTOPROMPT_LLAMA_QUANTIZATION", "q5", ["'q5'", "'q8_0'", "$AUTOPROMPT_LLAMA_QUANTIZATION", "'none'"]),
    ("AUTOPROMPT_MODEL_CACHE", "{file}/models", ["cannot write the q8_0 copy", "Not a directory",
                                                 "$AUTOPROMPT_MODEL_CACHE", "AUTOPROMPT_LLAMA_QUANTIZATION=none"]),
])
def test_bad_environment_is_one_line_and_exit_2(variable, value, words, tmp_path):
    """The served model's environment: an unknown quantization, a model cache that cannot be written."""
    (tmp_path / "a-file").write_text("")
    _one_line_exit_2(["evaluate", str(SENTIMENT), "--limit", "2"], words, tmp_path,
                     {variable: value.format(file=tmp_path / "a-file")})


def _one_line_exit_2(args: list[str], words: list[str], tmp_path: Path, env: dict | None = None) -> None:
    env_cache = {"AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache"), "AUTOPROMPT_DATA_DIR": str(tmp_path / "none")}
    import os

    out = subprocess.run([sys.executable, "-m", "autoprompt", *args, "--no-progress"] if args[0] in (
        "evaluate", "optimize", "better-together", "export-data", "decide") else [sys.executable, "-m", "autoprompt", *args],
        capture_output=True, text=True, env={**os.environ, **env_cache, **(env or {})}, timeout=300, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("autoprompt: error:") or lines[0].startswith("autoprompt "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not (tmp_path / "runs").exists()  # a refused run leaves no half run folder behind


def test_report_without_matplotlib_is_one_line(tmp_path):
    """The report extra missing: one line naming the extra (matplotlib hidden from the import system)."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from autoprompt.cli import main; sys.exit(main(sys.argv[1:]))")
    run = tmp_path / "run"
    from .test_cli import cli

    made = cli("optimize", SENTIMENT, "--option", "n_trials=1", "--option", "n_instructions=0", "--dev-limit", 2,
               "--train-limit", 10, "--no-test", "--run-dir", run, "--no-progress",
               env_extra={"AUTOPROMPT_DATA_DIR": str(tmp_path / "none"), "AUTOPROMPT_CACHE_DIR": str(tmp_path / "c")})
    assert made.returncode == 0, made.stderr
    out = subprocess.run([sys.executable, "-c", code, "report", str(run)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("autoprompt: error:") and "autoprompt[report]" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
