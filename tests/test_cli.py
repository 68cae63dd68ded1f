"""The command line, run as a user runs it: a real process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from .conftest import TASKS


def cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "autoprompt", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


def test_optimize_export_evaluate(tmp_path):
    env = {"AUTOPROMPT_DATA_DIR": str(tmp_path / "none"), "AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache")}
    run = tmp_path / "run"
    out = cli("optimize", TASKS / "sentiment.py", "--optimizer", "labeled", "--option", "k=2", "--dev-limit", 5,
              "--test-limit", 4, "--run-dir", run, "--no-progress", env_extra=env)
    assert out.returncode == 0, out.stderr
    assert "baseline" in out.stdout and "optimized" in out.stdout and "LM calls" in out.stdout
    scores = json.loads((run / "scores.json").read_text())["scores"]
    assert scores["optimized"]["test"]["n"] == 4
    for fmt, name in (("json", "p.json"), ("messages", "p.messages.json"), ("text", "p.txt")):
        done = cli("export", run, "--format", fmt, "-o", tmp_path / name)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / name).stat().st_size > 100
    assert "{{text}}" in (tmp_path / "p.txt").read_text()
    evaluated = cli("evaluate", TASKS / "sentiment.py", "--prompt", tmp_path / "p.json", "--split", "dev",
                    "--limit", 5, "--no-progress", env_extra=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["score"] == scores["optimized"]["dev"]["score"]
    data = cli("export-data", run, "--format", "trl", "-o", tmp_path / "data", "--limit", 4, "--no-progress",
               env_extra=env)
    assert data.returncode == 0, data.stderr
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["counts"]["examples"] == 4 and manifest["data_format"] == "trl"
    assert manifest["source_program"].endswith("prompt.json")


def test_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad_task.py"
    bad.write_text("x = 1\n")
    out = cli("optimize", bad, "--run-dir", tmp_path / "r")
    assert out.returncode == 2
    assert "autoprompt: error:" in out.stderr and "does not define a task" in out.stderr
    assert "Traceback" not in out.stderr
    missing = cli("export", tmp_path, "--format", "json")
    assert missing.returncode == 2 and "is not a run directory" in missing.stderr
    from autoprompt.store import RunStore

    RunStore.create("optimize", path=tmp_path / "cut").write_json("config.json", {"seed": 0})  # killed early
    unfinished = cli("export", tmp_path / "cut", "--format", "json")
    assert unfinished.returncode == 2 and "has no prompt.json" in unfinished.stderr and "--resume" in unfinished.stderr


def test_bad_options_are_one_line_naming_the_option_and_its_type(tmp_path):
    env = {"AUTOPROMPT_DATA_DIR": str(tmp_path / "none")}
    cases = [
        (("optimize", TASKS / "sentiment.py", "--option", "n_trialz=3"),
         "optimizer 'optuna' takes no option 'n_trialz'; its options are"),
        (("optimize", TASKS / "sentiment.py", "--option", "n_trials=abc"),
         "optimizer 'optuna': option n_trials takes int or None, got 'abc' (str)"),
        (("better-together", TASKS / "iris.py", "--option", "n_trials=abc"), "option n_trials takes int"),
        (("better-together", TASKS / "iris.py", "--finetune-option", "epochs=2.5"),
         "finetuner 'lora': option epochs takes int or None, got 2.5 (float)"),
        (("better-together", TASKS / "iris.py", "--data-option", "max_tracez=10"),
         "the w step's data takes no option 'max_tracez'"),
        (("better-together", TASKS / "iris.py", "--data-option", "balance=yes"),
         "option balance takes bool, got 'yes' (str)"),
    ]
    for args, message in cases:
        out = cli(*args, "--run-dir", tmp_path / "never", env_extra=env)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "never").exists()


_AUDIT = """
import sys
def hook(event, args):
    if event == "socket.getaddrinfo" and args[0] not in ("127.0.0.1", "::1", "localhost", b"localhost", None):
        print(f"NETWORK ATTEMPT: resolve {args[0]}", file=sys.stderr, flush=True)
    elif event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in ("127.0.0.1", "::1"):
        print(f"NETWORK ATTEMPT: connect {args[1]}", file=sys.stderr, flush=True)
sys.addaudithook(hook)
from autoprompt.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [
    ("evaluate", TASKS / "banking77.py", "--limit", 1),                     # local csv files, embedded LM
    ("evaluate", TASKS / "sentiment.py", "--limit", 2),                     # local jsonl files
    ("evaluate", TASKS / "sentiment.py", "--limit", 3, "--lm", "hosted_vllm/m",  # a server named on loopback
     "--api-base", "http://127.0.0.1:9/v1"),
])
def test_offline_by_default_no_network_attempt(args, tmp_path):
    """Nothing touches the network unless the user names a remote LM or a hub id: an audit hook reports every
    name resolution and connection that is not loopback (datasets would ping S3 to count csv "downloads")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_") or k == "HF_HOME"}
    env.update(HF_DATASETS_CACHE=str(tmp_path / "hf"), AUTOPROMPT_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", _AUDIT, *map(str, args), "--no-progress"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert "NETWORK ATTEMPT" not in out.stderr, out.stderr
    if "--api-base" in args:  # nothing listens there: one line, exit 2
        assert out.returncode == 2 and out.stderr.strip().startswith("autoprompt: error: the LM failed"), out.stderr
    else:
        assert out.returncode == 0, out.stderr


def _subcommands():
    from autoprompt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_argument_of_every_command_says_what_it_is():
    missing = {name: [a.dest for a in p._actions if not a.help] for name, p in _subcommands().items()}
    assert {name: dests for name, dests in missing.items() if dests} == {}


def test_commands_that_write_a_run_folder_share_its_flags():
    """optimize, better-together and decide take the same run flags (one parent parser), to the same values."""
    argv = ["--seed", "3", "--train-limit", "10", "--dev-limit", "5", "--test-limit", "7", "--run-dir", "r",
            "--runs-root", "rr", "--resume", "--cache-dir", "c", "--no-progress", "--task-option", "seed=1"]
    commands = _subcommands()
    parsed = {name: vars(commands[name].parse_args(["t.py", *argv])) for name in ("optimize", "better-together",
                                                                                  "decide")}
    keys = ("seed", "train_limit", "dev_limit", "test_limit", "run_dir", "runs_root", "resume", "cache_dir",
            "no_progress", "task_option")
    expected = {"seed": 3, "train_limit": 10, "dev_limit": 5, "test_limit": 7, "run_dir": "r", "runs_root": "rr",
                "resume": True, "cache_dir": "c", "no_progress": True, "task_option": ["seed=1"]}
    assert {name: {k: ns[k] for k in keys} for name, ns in parsed.items()} == {name: expected for name in parsed}
