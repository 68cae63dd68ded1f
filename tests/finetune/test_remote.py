"""Remote fine-tuning through DSPy's provider interface, up to the HTTP requests, against a real
OpenAI-compatible fine-tuning server process on loopback (tests/finetune/openai_ft_server.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autoprompt import FinetuneError
from autoprompt.export import TrainingData
from autoprompt.finetune import OpenAIFinetuner, get_finetuner

SERVER = Path(__file__).with_name("openai_ft_server.py")
SECRET = "sk-autoprompt-test-secret"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    record = tmp_path_factory.mktemp("ft-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port), str(record)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield f"http://127.0.0.1:{port}/v1", record
    proc.terminate()
    proc.wait(timeout=10)


def _data() -> TrainingData:
    rows = [[{"role": "system", "content": "Classify."}, {"role": "user", "content": f"text {i}"},
             {"role": "assistant", "content": '{"label": "positive"}'}] for i in range(3)]
    return TrainingData(train=[{"predictor": "self", "messages": m} for m in rows], val=[], counts={"records": 3},
                        manifest={"task": "sentiment"})


def _requests(record: Path) -> list[dict]:
    return [json.loads(line) for line in (record / "requests.jsonl").read_text().splitlines()]


def test_training_data_is_uploaded_and_a_job_started_through_dspy(server, tmp_path: Path) -> None:
    api_base, record = server
    tuner = OpenAIFinetuner("openai/gpt-4o-mini-2024-07-18", api_base=api_base, api_key=SECRET,
                            hyperparameters={"n_epochs": 2})
    result = tuner.finetune(_data(), tmp_path / "ft")

    assert result.lm_spec == "openai/ft:gpt-4o-mini-2024-07-18:autoprompt-test::ftjob-1"
    requests = _requests(record)
    upload = next(r for r in requests if r["path"] == "/v1/files")
    uploaded = [json.loads(line) for line in (record / f"{upload['body']['file_id']}.jsonl").read_text().splitlines()]
    assert uploaded == [{"messages": r["messages"]} for r in _data().train]
    assert upload["body"]["purpose"] == "fine-tune"
    job = next(r for r in requests if r["path"] == "/v1/fine_tuning/jobs")
    assert job["body"] == {"model": "gpt-4o-mini-2024-07-18", "training_file": upload["body"]["file_id"],
                           "hyperparameters": {"n_epochs": 2}}
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in requests)
    # the fine-tuned model is served from the same API; the key is used, never written
    lm = result.lm()
    assert lm.model == result.lm_spec and lm.kwargs["api_base"] == api_base
    written = (tmp_path / "ft" / "finetune.json").read_text()
    assert SECRET not in written and '"fine_tuned_model": "openai/ft:gpt-4o-mini' in written
    assert get_finetuner("openai", model="openai/x").options() == {"model": "openai/x", "api_base": None,
                                                                   "hyperparameters": {}}


def test_a_failed_job_raises_with_the_providers_status(server, tmp_path: Path) -> None:
    api_base, _ = server
    tuner = OpenAIFinetuner("openai/will-fail", api_base=api_base, api_key=SECRET)
    with pytest.raises(FinetuneError, match="fine-tuning job for openai/will-fail failed"):
        tuner.finetune(_data(), tmp_path)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(FinetuneError, match="'openai/<name>' model string"):
        OpenAIFinetuner("gpt-4o-mini")
    with pytest.raises(FinetuneError, match="no training examples to upload"):
        OpenAIFinetuner("openai/x").finetune(TrainingData(train=[], val=[], counts={}))
    with pytest.raises(FinetuneError, match="unknown finetuner 'nope'"):
        get_finetuner("nope")
