"""autoprompt report: the trial table, PNG plots, the Pareto front, exporting one trial."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import autoprompt
from autoprompt.report import open_study, trial_rows



def cli(*args):
    return subprocess.run([sys.executable, "-m", "autoprompt", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


def test_report_multi_objective_run(small_task, tmp_path):
    run = tmp_path / "run"
    autoprompt.optimize(small_task, run_dir=run, dev_limit=4, progress=False, optimizer="optuna", n_trials=4,
                        n_instructions=0, n_demo_sets=2, max_demos=2, minibatches=(2,), multi_objective=True)
    study = open_study(run)
    assert study.directions[1].name == "MINIMIZE"
    rows = trial_rows(study)
    assert len(rows) == 4 and all(r["prompt_tokens"] > 0 for r in rows)
    out = cli("report", run)
    assert out.returncode == 0, out.stderr
    assert "Pareto front" in out.stdout and "prompt tok" in out.stdout
    for name in ("optimization_history.png", "pareto_front.png"):
        assert (run / name).stat().st_size > 1000, name
    front = min(t.number for t in study.best_trials)
    exported = cli("export", run, "--trial", front, "--format", "json", "-o", tmp_path / "front.json")
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "front.json").read_text())
    assert document["trial"] == front
    program = autoprompt.load_prompt(tmp_path / "front.json", small_task)
    from autoprompt._retrieval import demos_for  # fixed demos, or as many retrieved per input

    assert len(demos_for(program.predictors()[0], {"text": "a film"})) == study.trials[front].params.get("self.n_demos", 0)

    # the same study served by optuna-dashboard over HTTP (a real server process on loopback)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "autoprompt", "dashboard", str(run), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studies = None
        for _ in range(100):
            try:
                studies = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read())
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                time.sleep(0.2)
        assert studies is not None, "the dashboard never answered"
        (summary,) = studies["study_summaries"]
        assert summary["study_name"] == "autoprompt" and summary["directions"] == ["maximize", "minimize"]
        detail = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0", timeout=5).read())
        assert len(detail["trials"]) == 4
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=5).read().decode()
        assert "<html" in page.lower()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_dashboard_of_a_better_together_run_names_the_step_folder(tmp_path):
    store = autoprompt.RunStore.create("better-together", path=tmp_path / "bt")
    store.write_json("config.json", {"task": {"name": "x"}})
    out = cli("dashboard", tmp_path / "bt")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "is a better-together run: its studies are in its p steps" in out.stderr and "steps/p/run" in out.stderr


def test_report_needs_an_optuna_run(tmp_path):
    out = cli("report", tmp_path)
    assert out.returncode == 2 and "not a run directory" in out.stderr
