"""`autoprompt decide` on the shipped tasks: the report (markdown, HTML, JSON) and a screenshot of the page.

Sentiment and iris reuse the variants of the BetterTogether benchmark's run of the same seed
(``benchmarks/runs/sentiment-s<seed>-autoprompt``, written by ``benchmarks/better_together.py``): the
variants are not searched or trained again; decide measures them (cost with the LM cache off,
consistency, paraphrases, the search's top trials) and runs the data curve (p and w on 50 and 200
train examples). Banking77 runs its variants itself (vanilla, p, w, p -> w, p -> w -> p on the
benchmark's 154 dev / 231 test rows, hours on 2 cores; a rerun resumes from the last finished step)
and its data curve at 231 and 770 train examples (3 and 10 per intent). Its LM cache is its own, empty
when it starts. The decide run folder (``benchmarks/runs/<task>-s<seed>-decide``, git-ignored) resumes:
a rerun skips what is measured. The report lands in ``benchmarks/results/decide/<task>/``:

    .venv/bin/python benchmarks/decide.py --task sentiment --seed 2
    .venv/bin/python benchmarks/decide.py --task banking77 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import autoprompt  # noqa: E402

RESULTS = HERE / "results" / "decide"
RUNS = HERE / "runs"
SETTINGS = {
    "sentiment": {"dev_limit": 200, "calls": 600, "max_traces": 1000, "data_sizes": (50, 200), "reuse": True},
    "iris": {"dev_limit": None, "calls": 400, "max_traces": None, "data_sizes": (20,), "reuse": True},
    # the BetterTogether benchmark's Banking77 rows: 154 dev / 231 test (seeded, 2 and 3 per intent); the
    # data curve at 3 and 10 train examples per intent. Its variants are run here: the benchmark's Banking77
    # run folders keep only their `w` steps
    "banking77": {"dev_limit": 154, "test_limit": 231, "calls": 600, "max_traces": 770, "data_sizes": (231, 770),
                  "reuse": False},
}


def screenshot(page: Path, out: Path) -> None:
    """The page in Debian's chromium (Playwright, no browser download), full height."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=args)
        try:
            tab = browser.new_page(viewport={"width": 1300, "height": 900})
            tab.goto(page.resolve().as_uri())
            tab.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-sizes", type=int, nargs="*", help="override the task's data curve sizes (none: no curve)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    s = dict(SETTINGS[args.task])
    if args.data_sizes is not None:
        s["data_sizes"] = tuple(args.data_sizes)
    run_dir = RUNS / f"{args.task}-s{args.seed}-decide"
    autoprompt.configure_cache(RUNS / f"{run_dir.name}-cache")
    reuse = RUNS / f"{args.task}-s{args.seed}-autoprompt" if s["reuse"] else None
    if reuse is not None and not (reuse / "config.json").is_file():
        sys.exit(f"{reuse} is missing: run benchmarks/better_together.py --task {args.task} --seeds {args.seed} first")
    task = autoprompt.load_task(str(ROOT / "tasks" / f"{args.task}.py"))
    started = time.monotonic()
    decision = autoprompt.decide(
        task, calls=s["calls"], max_traces=s["max_traces"], data_sizes=s["data_sizes"], reuse=reuse,
        seed=args.seed, run_dir=run_dir, resume=(run_dir / "config.json").is_file(), dev_limit=s["dev_limit"],
        test_limit=s.get("test_limit"),
        prices={"input": 0.15, "output": 0.60, "train_hour": 2.0}, progress=False,
    )
    out = RESULTS / args.task
    out.mkdir(parents=True, exist_ok=True)
    for name in ("decision.md", "decision.html", "decision.json"):
        shutil.copy(run_dir / name, out / name)
    screenshot(out / "decision.html", out / "decision.png")
    command = " ".join(["python", "benchmarks/decide.py", *sys.argv[1:]])
    (out / "README.md").write_text(
        f"# decide on {args.task}, seed {args.seed}\n\nCommand: `{command}` ({(time.monotonic() - started) / 60:.1f} "
        f"min for this invocation; a resumed one only re-measures what is missing). "
        + (f"Variants reused from `{reuse.relative_to(ROOT)}` (the BetterTogether benchmark's run)" if reuse else
           "Variants searched and trained by this decide run (`variants/` of its run folder)")
        + "; the decide run's LM cache was its own and empty at its start. Prices are illustrative (0.15 / 0.60 "
        "per 1M prompt / completion tokens, 2.0 per training hour). Files: `decision.md`, `decision.html` (screenshot "
        "`decision.png`, Debian's chromium), `decision.json`.\n")
    print(decision.markdown())


if __name__ == "__main__":
    main()
