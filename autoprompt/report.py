"""Reading a run back: its Optuna study, the trial table, PNG plots, and any trial's program.

``autoprompt report RUN`` prints the trial table and writes ``optimization_history.png``,
``param_importances.png`` and (multi-objective runs) ``pareto_front.png`` with Optuna's own
matplotlib plots (extra ``autoprompt[report]``). ``autoprompt dashboard RUN`` serves the run's study
in ``optuna-dashboard`` (same extra): :func:`serve_dashboard`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoprompt._exceptions import MissingExtraError, RunError
from autoprompt.store import RunStore

__all__ = ["load_config", "load_run", "open_study", "serve_dashboard", "study_storage", "trial_program", "trial_rows",
           "write_plots"]

logger = logging.getLogger(__name__)


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory (its format and version checked)."""
    return RunStore.open(run_dir).config


def load_run(run_dir: str | Path, *, lm: Any = None, cache_dir: str | None = None) -> tuple[dict, Any, Any]:
    """``(config, task, dspy_lm)`` of an optimize run: its task module reloaded with its options, and its
    LM (``lm`` overrides it; needed when the run's LM was an object or its URL carried a secret)."""
    from autoprompt.run import configure_cache

    store = RunStore.open(run_dir, "optimize")
    config, task = store.config, store.load_task()
    configure_cache(cache_dir)
    if lm is not None and not isinstance(lm, str):  # an LM object (or an LMSpec) as given
        return config, task, lm.build() if hasattr(lm, "to_dict") else lm
    return config, task, store.lm_spec(lm).build()


def study_storage(run_dir: str | Path, config: dict[str, Any], storage: str | None = None) -> str:
    """The storage URL of a run's study: ``storage`` if given, else the recorded one, else the
    default SQLite file in the run directory. Refuses a recorded URL whose password was hidden."""
    if config["optimizer"]["name"] != "optuna":
        raise RunError(f"{run_dir} ran optimizer {config['optimizer']['name']!r}, which keeps no Optuna study")
    url = storage or config["optimizer"]["options"].get("storage") or f"sqlite:///{Path(run_dir) / 'study.db'}"
    if "***" in url:
        raise RunError("the run's storage URL has a password, which is never saved: pass it again (CLI: --storage)")
    return url


def open_study(run_dir: str | Path, storage: str | None = None) -> Any:
    """The run's Optuna study (runs of the ``optuna`` optimizer only); ``storage`` overrides the URL."""
    import optuna

    config = load_config(run_dir)
    options = config["optimizer"]["options"]
    storage = study_storage(run_dir, config, storage)
    try:
        return optuna.load_study(study_name=options.get("study_name", "autoprompt"), storage=storage)
    except KeyError as exc:
        raise RunError(f"no study {options.get('study_name')!r} in {storage}") from exc


def serve_dashboard(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080,
                    storage: str | None = None) -> None:
    """Serve the run's study in optuna-dashboard until interrupted (a BetterTogether or decide run: pass a
    ``p`` step's ``run`` folder, e.g. ``RUN/steps/p/run``)."""
    store = RunStore.open(run_dir)
    if store.kind != "optimize":
        raise RunError(f"{run_dir} is a {store.kind} run: its studies are in its p steps; pass one of them, e.g. "
                       f"{Path(run_dir) / ('variants/steps/p/run' if store.kind == 'decide' else 'steps/p/run')}")
    url = study_storage(run_dir, store.config, storage)
    try:
        import optuna_dashboard
    except ImportError:
        raise MissingExtraError("autoprompt dashboard needs optuna-dashboard: pip install 'autoprompt[report]'") \
            from None
    logger.info("serving the study of %s at http://%s:%d/dashboard", run_dir, host, port)
    optuna_dashboard.run_server(url, host=host, port=port)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial: number, state, params, value(s), what it cost, and the trial it repeated
    (``repeat_of``: an earlier trial with the same program, whose outcome it took without an LM call)."""
    rows = []
    for t in study.trials:
        attrs = t.user_attrs
        rows.append({
            "trial": t.number,
            "state": t.state.name,
            "score": t.values[0] if t.values else attrs.get("score_so_far"),
            "prompt_tokens": attrs.get("prompt_tokens"),
            "examples": attrs.get("examples"),
            "lm_calls": attrs.get("lm_calls"),
            "tokens": attrs.get("tokens"),
            "seconds": attrs.get("seconds"),
            "params": t.params,
            "repeat_of": attrs.get("duplicate_of"),
        })
    return rows


def write_plots(study: Any, out_dir: str | Path) -> list[Path]:
    """Optuna's optimization-history, parameter-importance and Pareto-front plots as PNG files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("plots need matplotlib: pip install 'autoprompt[report]'") from exc
    import optuna
    from optuna.visualization import matplotlib as oplt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    multi = len(study.directions) > 1
    written = []
    plots = {"optimization_history": lambda: oplt.plot_optimization_history(
        study, target=(lambda t: t.values[0]) if multi else None, target_name="dev score")}
    if len(complete) >= 2:
        plots["param_importances"] = lambda: oplt.plot_param_importances(
            study, target=(lambda t: t.values[0]) if multi else None, target_name="dev score")
    if multi:
        plots["pareto_front"] = lambda: oplt.plot_pareto_front(study, target_names=["dev score", "prompt tokens"])
    import warnings

    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = make()
        except (ValueError, RuntimeError) as exc:  # e.g. no parameter varies yet
            logger.warning("plot %s skipped: %s", name, exc)
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        path = out / f"{name}.png"
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def trial_program(run_dir: str | Path, trial_number: int) -> tuple[Any, Any, dict]:
    """``(task, program, task_params)`` of one trial of a run, e.g. a point of the Pareto front."""
    from autoprompt.optimizers.optuna import program_of_trial

    study = open_study(run_dir)
    task = RunStore.open(run_dir, "optimize").load_task()
    program, task_params = program_of_trial(study, task, trial_number)
    return task, program, task_params
