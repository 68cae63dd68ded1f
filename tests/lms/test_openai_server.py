"""A LiteLLM/DSPy model string against a real OpenAI-compatible server on loopback.

The server is llama-cpp-python's own (``python -m llama_cpp.server``) serving the embedded model,
started by the test as a separate process. The model string is ``hosted_vllm/<name>``: DSPy's
generic OpenAI-compatible route that sends ``max_tokens`` (``openai/<name>`` sends
``max_completion_tokens``, which llama.cpp's server ignores).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dspy
import pytest

import autoprompt
from autoprompt.lms import smollm2_path

SECRET = "sk-autoprompt-test-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", os.environ.get("AUTOPROMPT_LLAMA_THREADS", "2")],
            stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("llama_cpp.server did not come up in 60 s")
        yield base, log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_optimize_through_an_openai_compatible_server(server, small_task, tmp_path):
    base, log = server
    lm = dspy.LM("hosted_vllm/smollm2", api_base=base, api_key=SECRET, max_tokens=32, temperature=0.0,
                 num_retries=0, cache=False)
    result = autoprompt.optimize(small_task, lm=lm, optimizer="labeled", k=2, run_dir=tmp_path / "run",
                                 dev_limit=3, progress=False)
    assert result.usage["lm_calls"] == 0  # LabeledFewShot makes no calls
    evaluation = result.evaluations[("optimized", "dev")]
    # Without llama.cpp's grammar the 135M model rarely writes valid JSON: such answers are counted
    # as parse failures (score 0), never raised; transport errors would be counted in `errors`.
    assert evaluation.n == 3 and evaluation.errors == 0
    assert evaluation.parse_failures + sum(r["predicted"] is not None for r in evaluation.records) == 3
    result.evaluate("test", limit=2, progress=False)
    served = log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert served >= 3 + 3 + 2, f"the server answered {served} chat requests"
    # the API key is never written to the run directory
    for path in Path(result.run_dir).rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="ignore"), path
    config = json.loads((Path(result.run_dir) / "config.json").read_text())
    assert config["lm"]["model"] == "hosted_vllm/smollm2"


def test_canary_secrets_reach_the_server_and_no_file_or_output(server, tmp_path):
    """Secrets by value, through the CLI against the real server: a key named by --api-key-env (its value read
    from the environment by name, again by export-data), a credential variable of the environment, a password
    in --api-base (DSPy's transport cannot use it, so that run fails: its config, log and error line still
    carry the URL) and an exception text quoting it. Every file written (run folders, exports, training data,
    LM cache) and every line printed is grepped for the canaries."""
    from ..test_cli import cli

    base, log = server
    key, password, env_token = "canary-key-8c1f0d3b", "canary-pw-51e7a2c4", "canary-env-9b3d6f20"
    tasks = Path(__file__).parents[2] / "tasks"
    env = {"AUTOPROMPT_DATA_DIR": str(tmp_path / "none"), "AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache"),
           "MY_LM_KEY": key, "OPENAI_API_KEY": env_token}
    run = tmp_path / "run"
    served_before = log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    outputs = [cli("-v", "optimize", tasks / "sentiment.py", "--lm", "hosted_vllm/smollm2", "--api-base", base,
                   "--api-key-env", "MY_LM_KEY", "--optimizer", "labeled", "--option", "k=2", "--dev-limit", 4,
                   "--test-limit", 2, "--run-dir", run, "--no-progress", env_extra=env)]
    assert outputs[0].returncode == 0, outputs[0].stderr
    assert log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') >= served_before + 4 + 4 + 2
    config = json.loads((run / "config.json").read_text())
    assert config["lm_spec"]["api_key_env"] == "MY_LM_KEY" and config["lm_spec"]["api_base"] == base
    outputs.append(cli("export", run, "--format", "messages", "-o", tmp_path / "export" / "p.json", env_extra=env))
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    # the run's own LM, rebuilt from its record: the key read again from $MY_LM_KEY
    outputs.append(cli("export-data", run, "-o", tmp_path / "data", "--limit", 2, "--no-progress", env_extra=env))
    assert outputs[-1].returncode == 0, outputs[-1].stderr
    # a password in the server URL: the run fails (one line), its files keep the URL with the password masked
    secret_url = base.replace("http://", f"http://autoprompt:{password}@")
    outputs.append(cli("-v", "optimize", tasks / "sentiment.py", "--lm", "hosted_vllm/smollm2", "--api-base",
                       secret_url, "--api-key-env", "MY_LM_KEY", "--optimizer", "labeled", "--dev-limit", 3,
                       "--run-dir", tmp_path / "failed", "--no-progress", env_extra=env))
    assert outputs[-1].returncode == 2 and outputs[-1].stderr.strip().splitlines()[-1].startswith("autoprompt: error:")
    recorded = json.loads((tmp_path / "failed" / "config.json").read_text())["lm_spec"]["api_base"]
    assert recorded == secret_url.replace(password, "***")
    # a command on that run must be given the URL again: one line
    outputs.append(cli("export-data", tmp_path / "failed", "-o", tmp_path / "d2", "--no-progress", env_extra=env))
    assert outputs[-1].returncode == 2 and "pass the LM again" in outputs[-1].stderr
    assert len(outputs[-1].stderr.strip().splitlines()) == 1
    # an exception text quoting the URL (nothing listens there): one line, the password masked (an empty LM
    # cache: DSPy's cache key leaves api_base out, so the cache of the runs above would answer these rows)
    outputs.append(cli("evaluate", tasks / "sentiment.py", "--lm", "hosted_vllm/smollm2", "--api-base",
                       f"http://autoprompt:{password}@127.0.0.1:9/v1", "--api-key-env", "MY_LM_KEY", "--limit", 3,
                       "--no-progress", env_extra={**env, "AUTOPROMPT_CACHE_DIR": str(tmp_path / "cache-empty")}))
    assert outputs[-1].returncode == 2 and "autoprompt: error:" in outputs[-1].stderr
    # the deprecated flag still works, with a warning
    outputs.append(cli("evaluate", tasks / "sentiment.py", "--lm", "hosted_vllm/smollm2", "--api-base", base,
                       "--api-key", key, "--limit", 1, "--no-progress", env_extra=env))
    assert outputs[-1].returncode == 0 and "--api-key-env" in outputs[-1].stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"config.json", "run.log", "p.json", "train.jsonl", "manifest.json"} <= {p.name for p in written}
    assert any("cache" in p.parts for p in written)
    for canary in (key, password, env_token):
        for path in written:
            assert canary.encode() not in path.read_bytes(), (canary, path)
        for out in outputs:
            assert canary not in out.stdout + out.stderr, (canary, out.args)


def test_jobs_overlap_trials_against_a_server(server, small_task, tmp_path):
    """--jobs 2 with a remote LM: two trials are in flight at once (their wall-clock intervals overlap), and the
    server answered every one of their calls."""
    import optuna

    base, log = server
    lm = dspy.LM("hosted_vllm/smollm2", api_base=base, api_key="none", max_tokens=24, temperature=0.0,
                 num_retries=0, cache=False)
    served = log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    result = autoprompt.optimize(small_task, lm=lm, optimizer="optuna", run_dir=tmp_path / "run", dev_limit=4,
                                 progress=False, n_trials=4, jobs=2, n_instructions=0, n_demo_sets=2, max_demos=2,
                                 minibatches=(4,), pruner="none")
    trials = [t for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 4
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    overlaps = sum(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert overlaps >= 1, spans
    assert all(t.user_attrs["examples"] == 4 for t in trials)
    # each trial counts its own calls, not those of the trial running beside it: together they are no more
    # than what the server answered besides the baseline and the winner on dev (4 + 4)
    calls = [t.user_attrs["lm_calls"] for t in trials]
    served_now = log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') - served
    assert all(c >= 4 for c in calls) and sum(calls) <= served_now - 8, (calls, served_now)
    # the baseline and the best program on dev (4 + 4) and the trials' 4 x 4 calls, each answered by the server
    assert log.read_text().count('"POST /v1/chat/completions HTTP/1.1" 200') - served >= 4 + 4 + 4 * 4
