"""`decide`: prompt, fine-tune or both, measured. Statistics and the recommendation as pure logic, the page in
a real browser, bad input, and a variant that fails on its data (the whole command on iris: test_end_to_end.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import autoprompt
from autoprompt.decision import Prices, Variant, bootstrap_ci, paired_test, paraphrases
from autoprompt.decision import _recommend
from tests._browser import render, serve

ROOT = Path(__file__).resolve().parents[2]


# -- statistics ---------------------------------------------------------------------------------------
def test_exact_mcnemar_matches_the_binomial_tail() -> None:
    a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 8  # a right alone on 10 examples, b right alone on 2
    b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 8
    out = paired_test(a, b)
    assert out["test"] == "exact McNemar" and (out["a_only"], out["b_only"]) == (10, 2)
    assert out["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)  # 0.0386
    assert out["difference"] == pytest.approx(8 / 50)
    assert paired_test(a, a)["p_value"] == 1.0


def test_graded_scores_use_a_permutation_test() -> None:
    a = [0.9, 0.8, 0.85, 0.95, 0.7, 0.9, 0.8, 0.9, 0.75, 0.85] * 3
    b = [x - 0.2 for x in a]
    out = paired_test(a, b)
    assert out["test"] == "paired sign-flip permutation" and out["p_value"] < 0.001
    assert paired_test(a, [x + 0.001 * (-1) ** i for i, x in enumerate(a)])["p_value"] > 0.5
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_test([1, 0], [1])


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n() -> None:
    small = bootstrap_ci([1] * 8 + [0] * 2)
    large = bootstrap_ci([1] * 800 + [0] * 200)
    assert small[0] < 0.8 < small[1] and large[0] < 0.8 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5
    assert bootstrap_ci([1, 0, 1], seed=3) == bootstrap_ci([1, 0, 1], seed=3)  # seeded


def test_paraphrases_are_written_from_the_signature() -> None:
    task = autoprompt.load_task(str(ROOT / "tasks" / "sentiment.py"))
    texts = paraphrases(task.signature, task.choices)
    assert texts[0] == "Classify the sentiment of a movie-review sentence."
    assert len(texts) == len(set(texts)) == 5
    assert "Given the text, answer with the label: positive or negative." in texts


# -- the recommendation -------------------------------------------------------------------------------
def _variant(name: str, right: int, n: int = 200, tokens: float = 100.0, **one_off: float) -> Variant:
    scores = [1.0] * right + [0.0] * (n - right)
    made = {"search_lm_calls": 0, "trace_lm_calls": 0, "finetune_seconds": 0.0, "seconds": 0.0, "cost": None,
            **one_off}
    return Variant(name, name, accuracy=right / n, interval=bootstrap_ci(scores), n=n, scores=scores,
                   inputs=list(range(n)), one_off=made,
                   inference={"prompt_tokens_per_call": tokens, "completion_tokens_per_call": 5.0,
                              "seconds_per_example": 0.1})


def test_the_simplest_variant_within_noise_of_the_best_is_recommended() -> None:
    variants = {"vanilla": _variant("vanilla", 100), "p": _variant("p", 150, tokens=400, search_lm_calls=600),
                "w": _variant("w", 154, tokens=90, finetune_seconds=600.0, trace_lm_calls=1000)}
    choice, reasons = _recommend(variants, Prices())
    assert choice == "p"  # 150 vs 154 right of 200: not significant; p is simpler than w
    assert "not significant" in reasons[0] and "2.0 points below the best" in reasons[0]
    assert any("310 fewer prompt tokens per call" in r and "give prices" in r for r in reasons)


def test_a_significantly_better_variant_wins_and_its_break_even_is_priced() -> None:
    variants = {"vanilla": _variant("vanilla", 100),
                "p": _variant("p", 120, tokens=400, search_lm_calls=600, cost=0.5),
                "w": _variant("w", 180, tokens=90, finetune_seconds=600.0, cost=2.5)}
    choice, reasons = _recommend(variants, Prices(input=1.0, output=2.0, train_hour=15.0))
    assert choice == "w" and reasons[0].startswith("w: the best test accuracy, 90.0%")
    assert "30.0 points above p" in reasons[0] and "Every simpler variant is significantly worse" in reasons[1]
    # the other way round: p chosen, w cheaper per call -> repaid after (2.5 - 0.5) / (310 tokens x $1/1M) calls
    variants["w"] = _variant("w", 121, tokens=90, finetune_seconds=600.0, cost=2.5)
    choice, reasons = _recommend(variants, Prices(input=1.0, output=2.0))
    assert choice == "p"
    assert any(f"repaid after {math.ceil(2.0 / (310 / 1e6)):,} calls" in r for r in reasons)


def test_the_page_and_the_markdown_carry_the_table_and_the_plots(tmp_path: Path) -> None:
    from autoprompt.decision import Decision, load_decision
    from autoprompt.store import RunStore

    variants = {"vanilla": _variant("vanilla", 100), "p": _variant("p", 150, tokens=400, search_lm_calls=600),
                "w": _variant("w", 170, tokens=90, finetune_seconds=600.0),
                "p -> w": Variant("p -> w", "p -> w", skipped="failed: cannot balance | the labels")}
    variants["p"].data_curve = [{"examples": 50, "score": 0.6, "interval": [0.5, 0.7]}, {"examples": 200, "score": 0.75}]
    variants["w"].data_curve = [{"examples": 50, "skipped": "failed"}, {"examples": 200, "score": 0.85}]
    choice, reasons = _recommend(variants, Prices())
    store = RunStore.create("decide", path=tmp_path / "run")
    store.write_json("config.json", {"task": {"name": "toy"}})
    decision = Decision(task="toy", variants=variants, recommendation=choice, reasons=reasons, run_dir=store.path,
                        config={})
    decision.save(store)
    md = (store.path / "decision.md").read_text()
    assert "**Recommendation: fine-tuned (w).**" in md and "| w | 85.0 |" in md
    assert "| p | 60.0 | 75.0 |" in md and "| w | skipped | 85.0 |" in md  # the data curve
    assert "failed: cannot balance" in md
    page = (store.path / "decision.html").read_text()
    assert page.count("<figure") == 3 and page.count("<svg") == 3  # accuracy, frontier, data curve
    assert "cannot balance | the labels" in page and "<td>85.0</td>" in page
    again = load_decision(store.path)
    again.save(store)
    assert (store.path / "decision.html").read_text() == page  # rendered again from decision.json, identical
    assert (store.path / "decision.md").read_text() == md

    # in a real browser: every row and plot drawn, nothing fails
    with serve(store.path) as url:
        seen = render(url + "decision.html", screenshot=tmp_path / "page.png")
    assert seen["status"] == 200 and seen["errors"] == [] and seen["title"] == "autoprompt decide: toy"
    assert [f["id"] for f in seen["figures"]] == ["plot-accuracy", "plot-frontier", "plot-data"]
    assert all(f["width"] > 200 and f["height"] > 100 and f["marks"] > 10 for f in seen["figures"])
    assert [r[0].split("\t")[0] for r in seen["rows"]] == ["vanilla", "p", "w", "p -> w"]
    assert all(height > 10 for _, height in seen["rows"])
    assert (tmp_path / "page.png").stat().st_size > 10_000


# -- the reference without an LM ------------------------------------------------------------------------
def test_the_neighbour_vote_chooses_k_on_dev_and_scores_test_with_the_task_metric() -> None:
    from autoprompt._retrieval import vote
    from autoprompt.decision._measure import neighbour_vote

    assert vote(["a", "b", "b", "a"]) == "a" and vote(["b", "a", "b"]) == "b"  # ties: the nearest (last) label
    train = [{"text": "great film", "label": "positive"}, {"text": "dull film", "label": "negative"},
             {"text": "dull plot", "label": "negative"}, {"text": "dull cast", "label": "negative"},
             {"text": "film noir", "label": "negative"}]
    dev = [{"text": "great great film", "label": "positive"}, {"text": "dull dull plot", "label": "negative"}]
    test = [{"text": "great great cast", "label": "positive"}, {"text": "dull film twist", "label": "positive"}]
    task = autoprompt.Task(name="toy", program="text -> label", train=train, dev=dev, test=test,
                           choices=["positive", "negative"])
    got = neighbour_vote(task, task.examples("train"), task.examples("dev"), task.examples("test"), ks=(1, 4))
    # dev: k=1 right twice (nearest: "great film", "dull plot"); k=4 wrong on "great great film" (its other three
    # neighbours are negative) -> k=1. test: "great great cast" -> "great film" (right); "dull film twist" ->
    # "dull film" -> negative (wrong)
    assert got["k"] == 1 and got["dev"] == {"1": 1.0, "4": 0.5} and got["dev_n"] == 2
    assert got["scores"] == [1.0, 0.0] and got["inputs"] == [{"text": t["text"]} for t in test]
    rows = [{"text": r["text"], "summary": r["label"]} for r in train]  # free text: nothing to vote on
    free = autoprompt.Task(name="free", program="text -> summary", train=rows, dev=rows, test=rows)
    assert neighbour_vote(free, free.examples("train"), free.examples("dev"), free.examples("test")) is None


def test_the_reference_is_compared_with_the_recommended_variant_on_the_same_examples(tmp_path: Path) -> None:
    from autoprompt.decision import Decision, _reference, _reference_reason, load_decision
    from autoprompt.store import RunStore

    store = RunStore.create("decide", path=tmp_path / "run")
    store.write_json("config.json", {"task": {"name": "toy"}})
    scores = [1.0] * 180 + [0.0] * 20
    store.write_json("measure/reference.json", {"method": "bm25-vote", "k": 8, "dev": {"8": 0.9}, "dev_n": 10,
                                                "scores": scores, "inputs": list(range(200))})
    p = _variant("p", 150)
    ref = _reference(None, store, {}, p, seed=0)  # loaded from measure/: the task is not read again
    assert ref["accuracy"] == 0.9 and ref["n"] == 200 and ref["interval"] == list(bootstrap_ci(scores))
    assert ref["vs_recommended"]["other"] == "p" and ref["vs_recommended"]["p_value"] < 0.05
    reason = _reference_reason(ref, p)
    assert "among the 8 train examples nearest" in reason and "scores 90.0%" in reason
    assert "15.0 points above p" in reason and "cheaper and better" in reason
    behind = _reason_for(store, _variant("w", 190))
    assert "5.0 points below w" in behind and "cheaper" not in behind
    decision = Decision(task="toy", variants={"p": p}, recommendation="p", reasons=[reason], run_dir=store.path,
                        config={}, reference=ref)
    decision.save(store)
    assert "no LM: 8-neighbour vote" in (store.path / "decision.html").read_text()
    assert load_decision(store.path).reference == json.loads(json.dumps(ref))  # round-trips through decision.json


def _reason_for(store, variant: Variant) -> str:
    from autoprompt.decision import _reference, _reference_reason

    return _reference_reason(_reference(None, store, {}, variant, seed=0), variant)


def test_prices_per_1000_calls() -> None:
    inference = {"prompt_tokens_per_call": 300.0, "completion_tokens_per_call": 10.0}
    assert Prices(input=0.5, output=1.5).per_1000_calls(inference) == pytest.approx(1000 * (150 + 15) / 1e6)
    assert Prices(input=0.5).per_1000_calls(inference) is None
    with pytest.raises(autoprompt.OptionError, match="price input must be a non-negative number"):
        Prices(input=-1)


# -- bad input ----------------------------------------------------------------------------------------
def test_a_task_without_a_test_split_is_refused_with_the_fix(tmp_path: Path) -> None:
    small = ROOT / "tasks" / "data" / "sentiment_small"
    task = autoprompt.Task(name="no-test", program="text -> label", train=str(small / "train.jsonl"),
                           dev=str(small / "dev.jsonl"), choices=["positive", "negative"])
    with pytest.raises(autoprompt.TaskError, match="has no test split.*give the task test="):
        autoprompt.decide(task, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(autoprompt.OptionError, match="prices takes input, output and train_hour, not \\['gpu'\\]"):
        autoprompt.decide(autoprompt.load_task(str(ROOT / "tasks" / "iris.py")), prices={"gpu": 1.0})


def test_a_variant_that_fails_on_its_data_is_reported_not_retried(tmp_path) -> None:
    """iris balanced (the default) without extra rounds: the zero-shot program's passing traces are all
    'setosa', so w cannot balance them; decide reports it, records it and does not try it again on --resume.
    No p variants (calls below the minimum: also reported), so only the zero-shot program and w's tracing
    run. (With the default extra rounds, 12 draws per flower find one versicolor among 20 train rows.)"""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "autoprompt", "decide", str(ROOT / "tasks" / "iris.py"), "--run-dir", str(run),
           "--data-option", "extra_rounds=0",
           "--calls", "10", "--samples", "2", "--wording-samples", "4", "--data-sizes", "--train-limit", "20",
           "--dev-limit", "10",
           "--test-limit", "10", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    variants = json.loads((run / "decision.json").read_text())["variants"]
    assert variants["w"]["skipped"].startswith("failed: cannot balance the training data of task 'iris'")
    assert variants["p"]["skipped"].startswith("skipped: a budget of 10 LM calls per prompt search is below")
    assert variants["p -> w -> p"]["skipped"] and variants["vanilla"]["accuracy"] is not None
    assert json.loads((run / "decision.json").read_text())["recommendation"] == "vanilla"
    again = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (run / "variants" / "run.log").read_text().count("BetterTogether step 'w' (from 'vanilla')") == 1
    assert "cannot balance" in (run / "decision.md").read_text()
