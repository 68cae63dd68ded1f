"""Several worker processes on one study in a real PostgreSQL server, started on loopback."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import optuna
import pytest

from ..conftest import TASKS
from .test_optuna_search import FINISHED, SMALL, autoprompt_cmd


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: `make test` installs Debian's postgresql package")
    return Path(found[-1]).parent


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _bindir()
    root = Path(tempfile.mkdtemp(prefix="autoprompt-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "autoprompt"]),
                   check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"),
                                 "-w", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://autoprompt@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_workers_on_postgresql_lose_and_duplicate_nothing(postgres_url, tmp_path):
    env = {**os.environ, "AUTOPROMPT_DATA_DIR": str(tmp_path / "none"), "AUTOPROMPT_CACHE_DIR": str(tmp_path / "c")}
    run = tmp_path / "run"
    first = subprocess.run(autoprompt_cmd("optimize", TASKS / "sentiment.py", "--run-dir", run, "--option",
                                          "n_trials=2", "--option", f'storage="{postgres_url}"', *SMALL),
                           env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (run / "study.db").exists()  # the study is in PostgreSQL
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"]["options"]["storage"] == postgres_url
    config["optimizer"]["options"]["n_trials"] = 8
    (run / "config.json").write_text(json.dumps(config))
    worker_env = {**env, "AUTOPROMPT_LLAMA_THREADS": "1"}
    workers = [subprocess.Popen(autoprompt_cmd("worker", run, "--worker", i, "--no-progress"), env=worker_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (1, 2)]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="autoprompt", storage=postgres_url)
    trials = study.trials
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len({t._trial_id for t in trials}) == len(trials)
    assert 8 <= len([t for t in trials if t.state in FINISHED]) <= 9
    pool = study.user_attrs["pool"]["predictors"]["self"]  # every worker sampled from the one shared pool
    for t in trials:
        assert t.params["self.instruction"] < len(pool["instructions"])
        if t.params["self.n_demos"]:  # fixed or per-input demos
            assert ("self.demo_set" in t.params) != bool(t.params.get("self.retrieve"))
        assert t.params.get("self.demo_set", 0) < len(pool["demo_sets"])


def test_storage_password_is_never_written(tmp_path):
    from autoprompt.optimizers import OptunaSearch

    options = OptunaSearch(storage="postgresql+psycopg2://me:hunter2@127.0.0.1:5432/db").options()
    assert "hunter2" not in json.dumps(options) and "***" in options["storage"]
