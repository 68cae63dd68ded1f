"""Shared fixtures. LM behaviour is tested on the embedded SmolLM2-135M model (real llama.cpp)."""

from __future__ import annotations

import os
from pathlib import Path

# no test goes to the network: set before datasets / huggingface_hub are imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# pytest-xdist runs one worker per core (pyproject.toml): each worker's llama.cpp and torch get their share of
# the cores (the processes they start inherit it), or their spinning threads slow every worker down
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("AUTOPROMPT_LLAMA_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import dspy
import pytest

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "tasks"
SHARED = REPO.parent / "shared" / "data"
SMALL = TASKS / "data" / "sentiment_small"


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """DSPy's LM cache, the datasets cache and the converted base models of the LoRA tests live in temporary
    folders, never in $HOME (the models' folder is shared by the run's workers: converted once, as for a user;
    a conversion is written under a temporary name and renamed, so two workers converting at once is safe)."""
    import autoprompt

    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-datasets"))
    root = tmp_path_factory.getbasetemp()
    models = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "models"
    models.mkdir(exist_ok=True)
    os.environ["AUTOPROMPT_MODEL_CACHE"] = str(models)
    autoprompt.configure_cache(tmp_path_factory.mktemp("dspy-cache"))


@pytest.fixture(autouse=True)
def _reset_dspy_settings():
    """Each test starts with no LM or adapter configured, and no secret registered by another test."""
    from autoprompt import _secrets

    yield
    dspy.settings.configure(lm=None, adapter=None)
    _secrets.clear()


@pytest.fixture(scope="session")
def lm() -> dspy.LM:
    import autoprompt

    return autoprompt.build_lm("local")


@pytest.fixture
def small_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The sentiment task on the project's own small set (40/20/20): no shared data in sight."""
    import autoprompt

    monkeypatch.setenv("AUTOPROMPT_DATA_DIR", str(tmp_path / "no-data-here"))
    task = autoprompt.load_task(TASKS / "sentiment.py")
    assert len(task.examples("train")) == 40
    return task


@pytest.fixture
def sst2_dir() -> Path:
    path = SHARED / "sst2"
    if not (path / "dev.jsonl").is_file():
        pytest.fail(f"the shared SST-2 data is missing at {path}; tests need ../shared beside the repo")
    return path
