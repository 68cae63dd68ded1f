"""A LiteLLM/DSPy model string against a real OpenAI-compatible server on loopback.

The server is llama-cpp-python's own (``python -m llama_cpp.server``) serving the embedded model,
started by the test as a separate process. The model string is ``hosted_vllm/<name>``: DSPy's
generic OpenAI-compatible route that sends ``max_tokens`` (``openai/<name>`` sends
``max_completion_tokens``, which llama.cpp's server ignores).
"""

from __future__ import annotations

import json
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
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
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


def test_the_cli_sends_the_key_to_the_server_and_writes_it_nowhere(server, tmp_path):
    """--api-base/--api-key through the CLI: the run works against the server, the key is in no run file."""
    from ..test_cli import cli

    base, _ = server
    run = tmp_path / "run"
    out = cli("optimize", Path(__file__).parents[2] / "tasks" / "sentiment.py", "--lm", "hosted_vllm/smollm2",
              "--api-base", base, "--api-key", SECRET, "--optimizer", "labeled", "--option", "k=2",
              "--dev-limit", 4, "--test-limit", 2, "--run-dir", run, "--no-progress",
              env_extra={"AUTOPROMPT_DATA_DIR": str(tmp_path / "none"), "AUTOPROMPT_CACHE_DIR": str(tmp_path / "c")})
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "scores.json").read_text())["scores"]["optimized"]["test"]["n"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["lm"]["model"] == "hosted_vllm/smollm2" and config["lm"]["kwargs"]["api_base"] == base
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
