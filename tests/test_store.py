"""The run store: creating and opening run folders, atomic stamped writes checked on read, redaction, resume."""

from __future__ import annotations

import json
import logging

import pytest

from autoprompt import RunError
from autoprompt._secrets import register_secret
from autoprompt.store import RunStore, atomic_write

CANARY = "canary-store-4f1c9a77e2"


def test_create_open_and_refuse(tmp_path):
    store = RunStore.create("optimize", path=tmp_path / "run")
    with pytest.raises(RunError, match="not a run directory: it has no config.json"):
        RunStore.open(tmp_path / "run")
    store.write_json("config.json", {"seed": 3, "task": {"source": "t.py"}})
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["format"] == "autoprompt.run" and config["format_version"] == 1 and config["seed"] == 3
    with pytest.raises(RunError, match="already holds a run"):
        RunStore.create("optimize", path=tmp_path / "run")
    opened = RunStore.open(tmp_path / "run")
    assert opened.kind == "optimize" and opened.config["seed"] == 3
    with pytest.raises(RunError, match="is a optimize run, not a better-together run"):
        RunStore.open(tmp_path / "run", "better-together")
    fresh = RunStore.create("better-together", runs_root=tmp_path / "runs", name="iris-bt", seed=1)
    assert fresh.path.parent == tmp_path / "runs" and fresh.path.name.startswith("iris-bt-")
    assert fresh.path.name.endswith("-s1")
    again = RunStore.create("better-together", runs_root=tmp_path / "runs", name="iris-bt", seed=1)
    assert again.path != fresh.path  # same second: suffixed, never shared


def test_every_read_checks_the_stamp(tmp_path):
    store = RunStore.create("better-together", path=tmp_path / "bt")
    store.write_json("config.json", {"seed": 0})
    step = store.child("steps/p")
    step.write_json("step.json", {"strategy": "p"}, sub="step")
    assert step.read_json("step.json", sub="step")["format"] == "autoprompt.better-together.step"
    with pytest.raises(RunError, match=r"step.json has format 'autoprompt.better-together.step' version 2; this "
                                       r"autoprompt reads 'autoprompt.better-together'"):
        step.read_json("step.json")  # a step file is not a results file
    document = json.loads((step.path / "step.json").read_text())
    (step.path / "step.json").write_text(json.dumps({**document, "format_version": 99}))
    with pytest.raises(RunError, match=r"step.json has format .* version 99; .*start a new run"):
        step.read_json("step.json", sub="step")
    (store.path / "config.json").write_text('{"format": "autoprompt.better-together", "format_')  # a torn file
    with pytest.raises(RunError, match="config.json cannot be read as JSON .*damaged"):
        RunStore.open(store.path)
    with pytest.raises(RunError, match="results.json does not exist"):
        store.read_json("results.json")


def test_first_format_optimize_runs_still_open(tmp_path):
    """optimize runs written before the store stamped a version only: they read as format autoprompt.run v1."""
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1, "lm_spec": "local",
                                                       "task": {"source": "x.py"}}))
    store = RunStore.open(tmp_path)
    assert store.kind == "optimize" and str(store.lm_spec()) == "local"


def test_atomic_writes_leave_no_temp_file_and_redact_by_value(tmp_path):
    register_secret(CANARY)
    store = RunStore.create("optimize", path=tmp_path / "run")
    store.write_json("config.json", {"lm": {"api_base": f"http://u:{CANARY}@host/v1"}, CANARY: 1})
    store.write_jsonl("evaluations/dev.jsonl", [{"failure": f"error: bad key {CANARY}"}])
    store.write_text("table.md", f"| {CANARY} |")
    atomic_write(tmp_path / "plain.txt", f"x{CANARY}y")
    with store.log():
        logging.getLogger("autoprompt.test").warning("key %s rejected", CANARY)
        try:
            raise ValueError(f"server said {CANARY}")
        except ValueError:
            logging.getLogger("autoprompt.test").exception("failed")
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"config.json", "dev.jsonl", "table.md", "plain.txt", "run.log"}
    for path in files:
        assert CANARY not in path.read_text(), path
    log = (store.path / "run.log").read_text()
    assert "key *** rejected" in log and "server said ***" in log
    assert json.loads((store.path / "config.json").read_text())["lm"]["api_base"] == "http://u:***@host/v1"
    # an LM whose server URL carried a secret is not rebuilt from the run: the user passes it again
    store.write_json("config.json", {"lm_spec": {"format_version": 1, "model": "hosted_vllm/m",
                                                 "api_base": f"http://u:{CANARY}@host/v1"}})
    with pytest.raises(RunError, match="carried a secret, which is never saved: pass the LM again"):
        RunStore.open(store.path).lm_spec()
    assert RunStore.open(store.path).lm_spec(redacted=True).model == "hosted_vllm/m"


def test_resume_compares_the_config_and_warns_on_a_moved_task_file(tmp_path, caplog):
    store = RunStore.create("better-together", path=tmp_path / "bt")
    config = {"task": {"name": "iris", "source": "/old/tasks/iris.py"}, "seed": 0, "limits": {"dev": 10}}
    store.write_json("config.json", config)
    moved = {**config, "task": {"name": "iris", "source": "/new/tasks/iris.py"}}
    with caplog.at_level(logging.WARNING):
        store.check_resume(moved, ("task", "seed", "limits"))
    assert "its task file was /old/tasks/iris.py, now /new/tasks/iris.py" in caplog.text
    with pytest.raises(RunError, match=r"cannot resume .*: its limits was \{'dev': 10\}, now \{'dev': 20\}"):
        store.check_resume({**moved, "limits": {"dev": 20}}, ("task", "seed", "limits"))


def test_programs_are_saved_atomically_and_redacted(tmp_path):
    import dspy

    register_secret(CANARY)
    program = dspy.Predict("text -> label")
    program.demos = [dspy.Example(text=f"my key is {CANARY}", label="positive")]
    store = RunStore.create("optimize", path=tmp_path / "run")
    store.save_program(program)
    assert [p.name for p in store.path.iterdir()] == ["program.json"]  # no temp file left
    text = (store.path / "program.json").read_text()
    assert CANARY not in text and "my key is ***" in text
    loaded = dspy.Predict("text -> label")
    loaded.load(str(store.path / "program.json"))
    assert loaded.demos[0]["label"] == "positive"


def test_a_storage_password_in_optimizer_options_never_reaches_config_json(tmp_path):
    """better_together records its steps' options in config.json; a storage URL's password is masked by value."""
    from autoprompt.bettertogether import PromptStep

    step = PromptStep("optuna", storage="postgresql+psycopg2://autoprompt:canary-db-pw-7e21@127.0.0.1:9/studies")
    store = RunStore.create("better-together", path=tmp_path / "bt")
    store.write_json("config.json", {"steps": {"p": step.options()}})
    text = (store.path / "config.json").read_text()
    assert "canary-db-pw-7e21" not in text and "autoprompt:***@127.0.0.1:9/studies" in text
