"""The ``autoprompt`` command: a thin shell over the library.

    autoprompt optimize tasks/sentiment.py [--optimizer optuna] [--lm local] [--max-calls N] ...
    autoprompt export RUN --format json|messages|text [-o FILE]
    autoprompt evaluate tasks/sentiment.py --prompt RUN/prompt.json --split test
    autoprompt better-together tasks/iris.py --all
    autoprompt decide tasks/sentiment.py [--calls N] [--finetune-minutes M] [--price-input X ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _kv(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    from autoprompt._options import OptionError

    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise OptionError(f"{flag} takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(result: Any, which: str, split: str) -> str:
    ev = result.evaluations.get((which, split))
    if ev is None:
        return "-"
    notes = [f"{ev.parse_failures} unparsed"] if ev.parse_failures else []
    notes += [f"{ev.errors} LM errors"] if ev.errors else []
    return f"{100 * ev.score:.1f}% of {ev.n}" + (f" ({', '.join(notes)})" if notes else "")


def summary_table(result: Any) -> str:
    """The final table: baseline vs optimized on dev and test, LM calls, tokens, wall time."""
    rows = [["program", "dev", "test"]]
    for which in ("baseline", "optimized"):
        rows.append([which, _pct(result, which, "dev"), _pct(result, which, "test")])
    usage = result.usage
    lines = [
        _table(rows),
        "",
        f"optimizer {result.optimizer.name}: {usage.get('lm_calls', 0)} LM calls, {usage.get('tokens', 0)} tokens, "
        f"{usage.get('optimize_seconds', 0):.0f} s"
        + (f" (stopped: budget spent, {usage['budget_exhausted']})" if usage.get("budget_exhausted") else ""),
        f"whole run: {result.seconds:.0f} s wall time; run directory: {result.run_dir}",
    ]
    study = result.study
    skipped = (study.user_attrs.get("pool") or {}).get("skipped") if study is not None else None
    if skipped and any(skipped.values()):
        lines.insert(-1, f"proposer: {skipped.get('instructions', 0)} instruction proposals and "
                         f"{skipped.get('bootstrap_examples', 0)} bootstrap examples failed or were unusable "
                         "(skipped; see run.log)")
    return "\n".join(lines)


def _lm(args: argparse.Namespace) -> Any:
    """``--lm`` as an :class:`LMSpec`: the key is named by ``--api-key-env`` (its name is recorded, the value
    read when the LM is built) or, deprecated, given by ``--api-key`` (kept in memory); the base URL is
    recorded with any secret in it redacted."""
    import os

    from autoprompt._exceptions import LMError
    from autoprompt.lms import LMSpec

    settings: dict[str, Any] = {}
    if args.api_key_env:
        if not os.environ.get(args.api_key_env):
            raise LMError(f"--api-key-env {args.api_key_env}: the variable is not set; "
                          f"export {args.api_key_env}=<key>")
        settings["api_key_env"] = args.api_key_env
    if args.api_key:
        logger.warning("--api-key puts the key in your shell history and in `ps`; export it and pass "
                       "--api-key-env NAME instead")
        settings["api_key"] = args.api_key
    if args.api_base:
        settings["api_base"] = args.api_base
        if not settings.get("api_key_env") and not settings.get("api_key"):
            settings["api_key"] = "none"  # OpenAI-compatible servers without auth still want a key
    return LMSpec.parse(args.lm, **settings)


def _run_lm(args: argparse.Namespace) -> Any:
    """The LM flags of a command on a run: None (the run's own LM), or an LMSpec (the run's model when only
    the server flags are given, e.g. to pass again a server URL whose secret was not saved)."""
    if args.lm is None and not (args.api_base or args.api_key_env or args.api_key):
        return None
    if args.lm is None:
        from autoprompt.store import RunStore

        args.lm = RunStore.open(args.run).lm_spec(redacted=True).model
    return _lm(args)


def _cmd_optimize(args: argparse.Namespace) -> int:
    import autoprompt
    from autoprompt.optimizers import get_optimizer
    from autoprompt.store import RunStore

    # the cheap checks first: a mistake in a flag is reported before any data loads
    task_options = _kv(args.task_option, "--task-option")
    options = _kv(args.option, "--option")
    get_optimizer(args.optimizer, **options, **({"jobs": args.jobs} if args.jobs else {}))
    if args.resume:
        RunStore.open(args.run_dir, "optimize")
    budget = autoprompt.Budget(max_calls=args.max_calls, max_tokens=args.max_tokens, max_seconds=args.max_seconds)
    lm = _lm(args)
    task = autoprompt.load_task(args.task, **task_options)
    result = autoprompt.optimize(
        task,
        lm=lm,
        optimizer=args.optimizer,
        seed=args.seed,
        budget=budget,
        proposer_lm=args.proposer_lm,
        run_dir=args.run_dir,
        runs_root=args.runs_root,
        resume=args.resume,
        cache_dir=args.cache_dir,
        train_limit=args.train_limit,
        dev_limit=args.dev_limit,
        test_limit=args.test_limit,
        progress=not args.no_progress,
        task_options=task_options,
        **options,
        **({"jobs": args.jobs} if args.jobs else {}),
    )
    if not args.no_test and task.sources["test"] is not None:
        result.evaluate("test", which="baseline", progress=not args.no_progress)
        result.evaluate("test", which="optimized", progress=not args.no_progress)
        result.save_program()
    print(summary_table(result))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from autoprompt.export import EXPORTERS, export_prompt

    source: Any = Path(args.run)
    if args.trial is not None:
        from autoprompt.export import prompt_document
        from autoprompt.report import trial_program

        task, program, task_params = trial_program(source, args.trial)
        source = prompt_document(program, task=task, meta={"trial": args.trial, "task_params": task_params})
    elif source.is_dir():
        source = _run_prompt(args.run)
    if args.output is None:
        from autoprompt.export import read_prompt

        text = EXPORTERS[args.format]().render(read_prompt(source))
        sys.stdout.write(text)
        return 0
    path = export_prompt(source, args.output, format=args.format)
    print(f"wrote {path}")
    return 0


def _run_prompt(run: str) -> Path:
    """The best prompt of a run folder (``prompt.json``), or one error saying the run has none yet."""
    from autoprompt._exceptions import RunError
    from autoprompt.store import RunStore

    store = RunStore.open(run)
    if not store.exists("prompt.json"):
        raise RunError(f"{run} has no prompt.json: the run did not finish its optimization step (--resume it)")
    return store.file("prompt.json")


def _cmd_export_data(args: argparse.Namespace) -> int:
    import dspy

    import autoprompt
    from autoprompt.export import compile_training_data
    from autoprompt.report import load_run

    config, task, lm = load_run(args.run, lm=_run_lm(args), cache_dir=args.cache_dir)
    prompt = _run_prompt(args.run)
    program = autoprompt.load_prompt(prompt, task)
    with dspy.context(lm=lm):
        data = compile_training_data(program, task, split=args.split, threshold=args.threshold,
                                     keep_demos=args.keep_demos, dedupe=not args.no_dedupe,
                                     val_fraction=args.val_fraction, limit=args.limit, seed=config["seed"],
                                     answers=args.answers, max_rounds=args.max_rounds,
                                     max_attempts=args.max_attempts, retry_calibration=args.retry_calibration,
                                     source=str(prompt), progress=not args.no_progress)
    out = Path(args.output)
    parts = data.by_predictor() if args.per_predictor else {None: data}
    for name, part in parts.items():
        folder = part.save(out / name if name else out, format=args.format)
        print(f"wrote {folder}: {len(part.train)} train / {len(part.val)} val records")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in data.counts.items()))
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _strategy(text: str) -> str:
    from autoprompt.bettertogether import parse_strategy

    try:
        return " -> ".join(parse_strategy(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _cmd_better_together(args: argparse.Namespace) -> int:
    import autoprompt
    from autoprompt.bettertogether import STRATEGIES

    from autoprompt.store import RunStore

    if args.resume:  # the cheap checks first: before any data loads
        RunStore.open(args.run_dir, "better-together")
    task_options = _kv(args.task_option, "--task-option")
    autoprompt.configure_cache(args.cache_dir)
    strategies = list(STRATEGIES) if args.all else (args.strategy or ["p -> w -> p"])
    finetune_options = _kv(args.finetune_option, "--finetune-option")
    finetuner = None
    if args.finetuner != "lora" or finetune_options:
        from autoprompt.finetune import get_finetuner

        if args.finetuner == "lora":
            finetune_options = {"seed": args.seed, "progress": not args.no_progress, **finetune_options}
        finetuner = get_finetuner(args.finetuner, **finetune_options)
    budget = autoprompt.Budget(max_calls=args.max_calls, max_seconds=args.max_seconds)
    lm = _lm(args)
    optimizer_options, data_options = _kv(args.option, "--option"), _kv(args.data_option, "--data-option")
    from autoprompt.bettertogether import PromptStep, WeightStep

    PromptStep(args.optimizer, **optimizer_options)  # checks the options; the run builds its own
    WeightStep(finetuner, **data_options)
    task = autoprompt.load_task(args.task, **task_options)
    result = autoprompt.better_together(
        task, strategies, lm=lm, optimizer=args.optimizer, optimizer_options=optimizer_options,
        budget=budget, finetuner=finetuner, data_options=data_options, seed=args.seed,
        run_dir=args.run_dir, runs_root=args.runs_root, resume=args.resume, train_limit=args.train_limit,
        dev_limit=args.dev_limit, test_limit=args.test_limit, test=not args.no_test, progress=not args.no_progress,
    )
    print(result.table())
    resumed = [name for name, step in result.steps.items() if step.resumed]
    if resumed:
        print(f"\nloaded finished steps: {', '.join(resumed)}")
    print(f"\nwhole run: {result.seconds:.0f} s wall time; run directory: {result.run_dir}")
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    import autoprompt
    from autoprompt.decision import LABELS, Prices
    from autoprompt.store import RunStore

    if args.resume:  # the cheap checks first: before any data loads
        RunStore.open(args.run_dir, "decide")
    if args.reuse:
        RunStore.open(args.reuse, "better-together")
    prices = Prices(input=args.price_input, output=args.price_output, train_hour=args.price_train_hour)
    task_options = _kv(args.task_option, "--task-option")
    data_options = _kv(args.data_option, "--data-option")
    optimizer_options = _kv(args.option, "--option")
    from autoprompt.bettertogether import PromptStep, WeightStep

    PromptStep("optuna", **optimizer_options)  # checks the names before any data loads
    WeightStep(None, **data_options)
    finetune_options = _kv(args.finetune_option, "--finetune-option")
    from autoprompt.finetune import get_finetuner

    get_finetuner("lora", **finetune_options)  # the same for the finetuner's options
    autoprompt.configure_cache(args.cache_dir)
    lm = _lm(args)
    task = autoprompt.load_task(args.task, **task_options)
    decision = autoprompt.decide(
        task, lm=lm, calls=args.calls, finetune_minutes=args.finetune_minutes, max_traces=args.max_traces,
        data_options=data_options, finetune_options=finetune_options, optimizer_options=optimizer_options,
        prices=prices, samples=args.samples, wording_samples=args.wording_samples, top_k=args.top_k,
        data_sizes=args.data_sizes, reuse=args.reuse, seed=args.seed,
        run_dir=args.run_dir, runs_root=args.runs_root, resume=args.resume, train_limit=args.train_limit,
        dev_limit=args.dev_limit, test_limit=args.test_limit, progress=not args.no_progress,
    )
    rows = [["variant", "test", "95% interval", "prompt tok/call", "s/example", "made in"]]
    for v in decision.variants.values():
        if v.skipped:
            rows.append([v.label, v.skipped[:60] + ("..." if len(v.skipped) > 60 else ""), "", "", "", ""])
        elif v.accuracy is not None:
            lo, hi = v.interval or (0.0, 0.0)
            rows.append([v.label, f"{100 * v.accuracy:.1f}%", f"{100 * lo:.1f}-{100 * hi:.1f}",
                         str(v.inference.get("prompt_tokens_per_call", "-")),
                         str(v.inference.get("seconds_per_example", "-")), f"{v.one_off['seconds'] / 60:.1f} min"])
    print(_table(rows))
    print(f"\nrecommendation: {LABELS[decision.recommendation]}")
    for reason in decision.reasons:
        print(f"- {reason}")
    print(f"\nreport: {decision.run_dir / 'decision.md'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from autoprompt.report import open_study, trial_rows, write_plots

    from autoprompt.store import RunStore

    if (Path(args.run) / "config.json").is_file() and RunStore.open(args.run).kind == "decide":
        from autoprompt.decision import load_decision

        decision = load_decision(args.run)
        out = RunStore.open(args.run, "decide") if args.out is None else RunStore(Path(args.out), "decide")
        decision.save(out)
        for name in ("decision.json", "decision.md", "decision.html"):
            print(f"wrote {out.file(name)}")
        return 0
    study = open_study(args.run)
    rows = [["trial", "state", "score", "prompt tok", "examples", "LM calls", "tokens", "s", "params"]]
    for r in trial_rows(study):
        score = "-" if r["score"] is None else f"{100 * r['score']:.1f}%"
        params = " ".join(f"{k.split('.')[-1]}={v}" for k, v in r["params"].items())
        state = r["state"] if r["repeat_of"] is None else f"{r['state']} (= {r['repeat_of']})"
        rows.append([str(r["trial"]), state, score, str(r["prompt_tokens"] or "-"), str(r["examples"] or "-"),
                     str(r["lm_calls"] if r["lm_calls"] is not None else "-"), str(r["tokens"] or "-"),
                     str(r["seconds"] or "-"), params])
    print(_table(rows))
    if len(study.directions) > 1:
        front = sorted(t.number for t in study.best_trials)
        print(f"\nPareto front (score vs prompt tokens): trials {front}; export one with "
              f"autoprompt export {args.run} --trial N")
    written = write_plots(study, Path(args.out or args.run))
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from autoprompt.report import serve_dashboard

    print(f"serving the study of {args.run} at http://{args.host}:{args.port}/dashboard (Ctrl-C stops)", flush=True)
    serve_dashboard(args.run, host=args.host, port=args.port, storage=args.storage)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    import dspy

    from autoprompt._adapter import CompactJSONAdapter
    from autoprompt.optimizers import optimizer_from_config
    from autoprompt.report import load_run, study_storage
    from autoprompt.run import run_context
    from autoprompt.store import RunStore
    from autoprompt.usage import Budget, Meter

    config, task, lm = load_run(args.run, lm=_run_lm(args), cache_dir=args.cache_dir)
    optimizer = optimizer_from_config(config["optimizer"], storage=study_storage(args.run, config, args.storage))
    meter = Meter(Budget(**config["budget"]))
    context = run_context(task, RunStore.open(args.run, "optimize"), config, meter, progress=not args.no_progress,
                          worker=args.worker)
    meter.enforcing = True
    with dspy.context(lm=lm, adapter=CompactJSONAdapter(), usage_tracker=meter):
        study = optimizer.run_trials(task.make_program(), task, context)
    print(f"worker {args.worker}: {meter.calls} LM calls; the study now has {len(study.trials)} trials")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import dspy

    import autoprompt
    from autoprompt._adapter import CompactJSONAdapter
    from autoprompt.evaluate import evaluate_program

    task = autoprompt.load_task(args.task, **_kv(args.task_option, "--task-option"))
    program = autoprompt.load_prompt(args.prompt, task) if args.prompt else task.make_program()
    autoprompt.configure_cache(args.cache_dir)
    with dspy.context(lm=_lm(args).build(), adapter=CompactJSONAdapter()):
        ev = evaluate_program(program, task, args.split, limit=args.limit, progress=not args.no_progress)
    print(json.dumps(ev.to_dict(), indent=2))
    return 0


TASK_HELP = "a task module: a .py file defining `task` or make_task(), e.g. tasks/sentiment.py"
TASK_OPTION_HELP = "passed to the task module's make_task(), e.g. seed=1 (repeat for several)"
RUN_HELP = "a run folder"


def build_parser() -> argparse.ArgumentParser:
    from autoprompt._version import __version__
    from autoprompt.finetune import FINETUNERS
    from autoprompt.optimizers import OPTIMIZERS

    parser = _Parser(prog="autoprompt", description="Automated prompt optimization.")
    parser.add_argument("--version", action="version", version=f"autoprompt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    lm_flags = _lm_parser(default="local")
    run_lm_flags = _lm_parser(default=None)  # commands on a run: its own LM unless given
    cache_flags = _cache_parser()
    run_flags = _run_parser(cache_flags)
    steps_flags = _steps_parser()

    p = sub.add_parser("optimize", parents=[lm_flags, run_flags],
                       help="optimize a task's prompt; prints baseline vs optimized scores")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--optimizer", default="optuna", choices=sorted(OPTIMIZERS), help="default: optuna")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="optimizer option, e.g. n_trials=8")
    p.add_argument("--proposer-lm", help="a stronger LM for proposing instructions and bootstrapping demos")
    p.add_argument("--jobs", type=int, help="optimizer optuna: trials run concurrently in this process")
    p.add_argument("--max-calls", type=int, help="cap on LM calls of the optimization step")
    p.add_argument("--max-tokens", type=int, help="cap on tokens of the optimization step")
    p.add_argument("--max-seconds", type=float, help="cap on wall time of the optimization step")
    p.add_argument("--no-test", action="store_true", help="do not score the test split")
    p.set_defaults(func=_cmd_optimize)

    p = sub.add_parser("export", help="write a run's best prompt as json, chat messages or text")
    p.add_argument("run", help="a run directory (or a prompt.json)")
    p.add_argument("--format", default="json", choices=["json", "messages", "text"],
                   help="json: loads back into the program; messages: chat messages for any client; text: to read")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.add_argument("--trial", type=int, help="export this trial of the run's study (e.g. a Pareto-front point)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("export-data", parents=[run_lm_flags, cache_flags],
                       help="compile a run's best program into fine-tuning data")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--format", default="openai", choices=["openai", "hf", "trl"],
                   help="openai: chat-messages JSONL; hf: a datasets folder and parquet; trl: prompt/completion JSONL "
                        "(default: openai)")
    p.add_argument("-o", "--output", required=True, help="folder to write")
    p.add_argument("--split", default="train", choices=["train", "dev", "test"], help="the examples traced")
    p.add_argument("--threshold", type=float, default=1.0, help="keep traces whose metric is at least this")
    p.add_argument("--keep-demos", action="store_true", help="keep the demos in the training prompts")
    p.add_argument("--answers", default="program", choices=["program", "gold"],
                   help="the program's passing answers (BetterTogether) or the split's gold labels")
    p.add_argument("--no-dedupe", action="store_true", help="keep records whose messages are identical")
    p.add_argument("--val-fraction", type=float, default=0.0, help="share of the records written as validation")
    p.add_argument("--per-predictor", action="store_true", help="one data set per predictor")
    p.add_argument("--limit", type=int, help="a seeded sample of N examples, stratified over the labels")
    p.add_argument("--max-rounds", type=int, default=1,
                   help="attempts per example: failing greedy answers are sampled again at temperature 1.0")
    p.add_argument("--max-attempts", type=int, default=None,
                   help="stop after this many program runs and keep what passed so far (default: no cap)")
    p.add_argument("--retry-calibration", type=float, default=0.0, metavar="STRENGTH",
                   help="rounds after the first run with the label choice calibrated, the second greedily "
                        "(0: off; 1: full correction)")
    p.set_defaults(func=_cmd_export_data)

    p = sub.add_parser("better-together", parents=[lm_flags, run_flags, steps_flags],
                       help="alternate prompt optimization (p) and LoRA fine-tuning (w)")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--strategy", action="append", type=_strategy,
                   help="e.g. 'p -> w -> p' (the default); repeat for several (shared prefixes run once)")
    p.add_argument("--all", action="store_true", help="the paper's strategies: p, w, p -> w, w -> p, p -> w -> p")
    p.add_argument("--optimizer", default="optuna", choices=sorted(OPTIMIZERS), help="for the p steps")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="optimizer option, e.g. n_trials=8")
    p.add_argument("--finetuner", default="lora", choices=sorted(FINETUNERS), help="for the w steps")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="w step option, e.g. max_traces=1000, balance=false, val_fraction=0.1, threshold=1.0")
    p.add_argument("--max-calls", type=int, help="cap on LM calls of each p step")
    p.add_argument("--max-seconds", type=float, help="cap on wall time of each p step")
    p.add_argument("--no-test", action="store_true", help="do not score the steps on the test split")
    p.set_defaults(func=_cmd_better_together)

    p = sub.add_parser("decide", parents=[lm_flags, run_flags, steps_flags],
                       help="prompt, fine-tune or both? measure the variants on your task and recommend one")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--calls", type=_positive_int, default=600, help="LM-call cap of each prompt search (default 600)")
    p.add_argument("--finetune-minutes", type=float, help="wall-time cap of each fine-tuning (default: none)")
    p.add_argument("--max-traces", type=_positive_int, default=1000, help="traces a fine-tuning step trains on")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="option of the prompt searches (optuna), e.g. n_trials=8, retrieved_demos=false")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="w step option, e.g. balance=false, val_fraction=0.2, max_rounds=2")
    p.add_argument("--price-input", type=float, metavar="PRICE", help="price per 1M prompt tokens")
    p.add_argument("--price-output", type=float, metavar="PRICE", help="price per 1M completion tokens")
    p.add_argument("--price-train-hour", type=float, metavar="PRICE", help="price per hour of fine-tuning")
    p.add_argument("--samples", type=_positive_int, default=20, help="test examples for cost and consistency")
    p.add_argument("--wording-samples", type=_positive_int, default=50,
                   help="test examples for the paraphrases and the search's top trials")
    p.add_argument("--top-k", type=int, default=3, help="best search trials rescored for wording sensitivity")
    p.add_argument("--data-sizes", type=_positive_int, nargs="*", default=[50, 200], metavar="N",
                   help="the data curve: p and w again on N train examples (default 50 200; none: no curve)")
    p.add_argument("--reuse", metavar="BT_RUN", help="a better-together run folder whose steps are the variants")
    p.set_defaults(func=_cmd_decide)

    p = sub.add_parser("report", help="print a run's trial table and write PNG plots (a decide run: its pages)")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--out", help="folder for the PNG files (default: the run directory)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("dashboard", help="serve a run's Optuna study in optuna-dashboard")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=_positive_int, default=8080, help="default: 8080")
    p.add_argument("--storage", help="the study's storage URL, if it has a password (never saved)")
    p.set_defaults(func=_cmd_dashboard)

    p = sub.add_parser("worker", parents=[run_lm_flags, cache_flags],
                       help="join a run's Optuna study and run trials (several may run at once)")
    p.add_argument("run", help=RUN_HELP)
    p.add_argument("--worker", type=int, default=1, help="this worker's number (seeds its sampler)")
    p.add_argument("--storage", help="the study's storage URL, if it has a password (never saved)")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("evaluate", parents=[lm_flags, cache_flags],
                       help="score a task's program, or an exported prompt, on a split")
    p.add_argument("task", help=TASK_HELP)
    p.add_argument("--prompt", help="a prompt.json to load into the program")
    p.add_argument("--split", default="dev", choices=["train", "dev", "test"], help="default: dev")
    p.add_argument("--limit", type=int, help="a seeded sample of N examples, stratified over the labels")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE", help=TASK_OPTION_HELP)
    p.set_defaults(func=_cmd_evaluate)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``autoprompt: error: <what>; see autoprompt <command> --help`` and exit 2
    (argparse's own prints the whole usage block first, which buries the line that matters)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"autoprompt: error: {message} (see: {self.prog} --help)\n")


def _cache_parser() -> argparse.ArgumentParser:
    """The flags of every command that calls the LM and shows progress."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cache-dir", help="DSPy's LM response cache directory (default: $AUTOPROMPT_CACHE_DIR, else "
                                       "DSPy's own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def _run_parser(cache_flags: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of the commands that write a run folder (optimize, better-together, decide)."""
    p = argparse.ArgumentParser(add_help=False, parents=[cache_flags])
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE", help=TASK_OPTION_HELP)
    p.add_argument("--seed", type=int, default=0,
                   help="the run's seed: the search's sampler, the train examples' order, the fine-tuning "
                        "(default 0; the --*-limit samples are the same for every seed)")
    for split in ("train", "dev", "test"):
        p.add_argument(f"--{split}-limit", type=int, metavar="N",
                       help=f"a seeded sample of N {split} examples, stratified over the labels"
                            + ("; also bounds the traces of w steps" if split == "train" else ""))
    p.add_argument("--run-dir", help="the run folder (default: <runs-root>/<task>[-bt|-decide]-<time>-s<seed>)")
    p.add_argument("--runs-root", default="runs", help="where new run folders go (default: runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir: finished trials and steps are kept")
    return p


def _steps_parser() -> argparse.ArgumentParser:
    """The flags of the commands that run BetterTogether steps in a run folder (better-together, decide)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--finetune-option", action="append", metavar="KEY=VALUE",
                   help="finetuner option of the w steps (decide: the LoRA finetuner), e.g. epochs=2, rank=8")
    return p


def _lm_parser(default: str | None) -> argparse.ArgumentParser:
    """The LM flags every command that calls an LM shares."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--lm", default=default,
                   help="'local' (the embedded SmolLM2-135M), 'local?lora=adapter.gguf' or a LiteLLM model string"
                        + (" (default: the run's own)" if default is None else ""))
    p.add_argument("--api-base", help="base URL of an OpenAI-compatible server (with --lm hosted_vllm/<model>)")
    p.add_argument("--api-key-env", metavar="NAME", help="the environment variable holding the API key")
    p.add_argument("--api-key", help="deprecated (shell history, ps): use --api-key-env; never written to files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autoprompt`` command; returns the exit code."""
    from autoprompt._exceptions import AutopromptError

    from autoprompt._secrets import RedactingFilter, redact, secrets_from_env

    secrets_from_env()  # credential variables' values are masked in every line written or logged
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # run.log gets INFO; the terminal only with -v
        handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
        handler.addFilter(RedactingFilter())
    try:
        return args.func(args)
    except AutopromptError as exc:
        print(f"autoprompt: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autoprompt: interrupted; what was computed is in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
