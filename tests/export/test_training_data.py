"""Compiling a program's passing traces into fine-tuning data: filters, counts, formats, manifest."""

from __future__ import annotations

import json
import random
from collections import Counter

import datasets
import dspy
import pytest

import autoprompt
from autoprompt import ExportError
from autoprompt.export import compile_training_data
from autoprompt.export._training import split_validation
from autoprompt.lms import build_lm


@pytest.fixture
def program(small_task):
    program = small_task.make_program()
    train = small_task.examples("train")
    program.predictors()[0].demos = [e for e in train if e.label == "positive"][:1] + \
        [e for e in train if e.label == "negative"][:1]
    return program


def test_counts_filter_and_formats(lm, small_task, program, tmp_path):
    with dspy.context(lm=lm):
        data = compile_training_data(program, small_task, limit=12, val_fraction=0.25, progress=False)
    c = data.counts
    assert c["examples"] == 12
    assert c["kept_examples"] + c["dropped_metric"] + c["dropped_parse"] + c["dropped_error"] == 12
    assert c["records"] == c["kept_examples"] - c["duplicates"] == len(data.train) + len(data.val)
    assert c["kept_examples"] > 0
    # plain prompts by default (BetterTogether trains without the demos): system, user, assistant
    record = data.train[0]
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert json.loads(record["messages"][-1]["content"])["label"] in ("positive", "negative")
    # every kept record's answer is the gold label (threshold 1.0 on exact match)
    gold = {e.text: e.label for e in small_task.examples("train")}
    for r in data.train + data.val:
        text = r["messages"][1]["content"].split("[[ ## text ## ]]\n", 1)[1].split("\n\n", 1)[0]
        assert json.loads(r["messages"][-1]["content"])["label"] == gold[text]

    openai_dir = data.save(tmp_path / "openai", format="openai")
    lines = (openai_dir / "train.jsonl").read_text().splitlines()
    assert len(lines) == len(data.train) and set(json.loads(lines[0])) == {"messages"}
    manifest = json.loads((openai_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["task"] == "sentiment"
    assert manifest["counts"] == c and manifest["filter"]["threshold"] == 1.0
    assert manifest["rows"] == {"train": len(data.train), "val": len(data.val)}

    trl = data.save(tmp_path / "trl", format="trl")
    row = json.loads((trl / "train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["completion"]] == ["assistant"] and row["prompt"][-1]["role"] == "user"

    hf = data.save(tmp_path / "hf", format="hf")
    loaded = datasets.load_from_disk(str(hf / "train"))
    assert len(loaded) == len(data.train)
    assert len(datasets.load_dataset("parquet", data_files=str(hf / "train.parquet"), split="train")) == len(data.train)


def test_keep_demos_and_dedupe(lm, small_task, program):
    with dspy.context(lm=lm):
        with_demos = compile_training_data(program, small_task, limit=4, keep_demos=True, progress=False)
        doubled = compile_training_data(program, small_task, split="train", limit=4, progress=False)
    if with_demos.train:
        assert len(with_demos.train[0]["messages"]) == 1 + 2 * 2 + 2
    assert doubled.counts["duplicates"] == 0


def test_parse_failures_are_dropped_and_counted(small_task, program):
    with dspy.context(lm=build_lm("local", max_tokens=3)):
        data = compile_training_data(program, small_task, limit=3, progress=False)
    assert data.counts["dropped_parse"] == 3 and data.train == []


def test_bad_options(small_task, program, tmp_path):
    with pytest.raises(ExportError, match="val_fraction"):
        compile_training_data(program, small_task, val_fraction=1.5)
    data = autoprompt.export.TrainingData([], [], {})
    with pytest.raises(ExportError, match="format must be one of"):
        data.save(tmp_path, format="csv")


def test_gold_answers_need_no_lm_and_match_the_program_prompts(lm, small_task, program):
    """answers='gold': the labels answer the same prompts the program sends (plain supervised data)."""
    gold = compile_training_data(program, small_task, limit=6, answers="gold", dedupe=False, progress=False)
    assert gold.counts["kept_examples"] == gold.counts["records"] == 6 and gold.manifest["options"]["answers"] == "gold"
    labels = [e.label for e in small_task.examples("train", limit=6)]
    assert [json.loads(r["messages"][-1]["content"])["label"] for r in gold.train] == labels
    with dspy.context(lm=lm):
        traced = compile_training_data(program, small_task, limit=6, threshold=0.0, dedupe=False, progress=False)
    assert [r["messages"][:-1] for r in traced.train] == [r["messages"][:-1] for r in gold.train]
    with pytest.raises(ExportError, match="answers must be 'program' or 'gold'"):
        compile_training_data(program, small_task, answers="labels")


def _biased_lm(task, right_negatives: int):
    """A stub LM (DSPy's DummyLM) that answers "positive" for every review: right on the positives and on
    none of the negatives but the first ``right_negatives``, like the zero-shot 135M model on SST-2."""
    from dspy.utils.dummies import DummyLM

    negatives = [e.text for e in task.examples("train") if e.label == "negative"][:right_negatives]
    answers = {text: {"label": "negative"} for text in negatives}
    answers.update({e.text: {"label": "positive"} for e in task.examples("train") if e.text not in negatives})
    return DummyLM(answers, adapter=dspy.JSONAdapter())


def test_balance_caps_every_label_at_the_rarest_and_reports_the_histogram(small_task):
    program = small_task.make_program()
    with dspy.context(lm=_biased_lm(small_task, right_negatives=5)):
        data = compile_training_data(program, small_task, balance=True, val_fraction=0.2, progress=False)
    labels, c = data.manifest["labels"], data.counts
    assert labels["kept"] == {"negative": 5, "positive": 5} and labels["dropped_balance"] == {"positive": 15}
    assert labels["dropped_metric"] == {"negative": 15} and labels["missing"] == []
    assert c["examples"] == 40 and c["kept_examples"] == 10 and c["dropped_balance"] == 15
    answers = [json.loads(r["messages"][-1]["content"])["label"] for r in data.train + data.val]
    assert sorted(answers) == ["negative"] * 5 + ["positive"] * 5
    # the validation share is stratified too: one example of each label
    assert sorted(r["label"] for r in data.val) == ["negative", "positive"]


def test_the_validation_share_holds_back_examples_of_a_task_with_many_labels_and_few_traces_each():
    # 82 traces over 50 labels, like Banking77's data curve at 231 examples: rounding 0.1 x 1..4 per label gave none
    rng = random.Random(3)
    records = [{"example": i, "label": f"intent{rng.randrange(50)}"} for i in range(82)]
    per_label = Counter(r["label"] for r in records)
    train, val = split_validation(records, 0.1, seed=0)
    assert len(val) == 8 and len(train) == 74
    assert all(per_label[r["label"]] >= 2 for r in val)  # no label loses its only training example
    assert {r["label"] for r in train} == set(per_label)
    assert split_validation(records, 0.1, seed=0) == (train, val)  # seeded
    assert split_validation(records, 0.0, seed=0) == (records, [])
    # a label's whole share comes before any remainder: 30 of one label, 10 of another -> 3 + 1
    two = [{"example": i, "label": "a" if i < 30 else "b"} for i in range(40)]
    assert Counter(r["label"] for r in split_validation(two, 0.1, seed=1)[1]) == {"a": 3, "b": 1}


def test_max_traces_fills_a_quota_per_label_without_running_the_rest(small_task):
    program = small_task.make_program()
    lm = _biased_lm(small_task, right_negatives=20)
    with dspy.context(lm=lm):
        data = compile_training_data(program, small_task, balance=True, max_traces=6, progress=False)
    assert data.manifest["labels"]["kept"] == {"negative": 3, "positive": 3}
    c = data.counts
    assert c["kept_examples"] == 6 and c["examples"] == 6 and len(lm.history) == 6  # no call past a full quota
    assert c["skipped_quota"] == sum(data.manifest["labels"]["skipped_quota"].values()) <= 34
    with dspy.context(lm=_biased_lm(small_task, right_negatives=20)):  # the seed picks the sample
        other = compile_training_data(program, small_task, balance=True, max_traces=6, seed=1, progress=False)
    assert [r["messages"] for r in other.train] != [r["messages"] for r in data.train]


def test_traces_of_one_label_cannot_be_balanced(small_task, caplog):
    program = small_task.make_program()
    with dspy.context(lm=_biased_lm(small_task, right_negatives=0)):
        with pytest.raises(ExportError, match=r"cannot balance .*'sentiment'.*\{'positive': 20\}.*answers='gold'"):
            compile_training_data(program, small_task, balance=True, progress=False)
    with pytest.raises(ExportError, match="max_traces must be a positive integer"):
        compile_training_data(program, small_task, max_traces=0)


class _LateRightLM:
    """Stub LM factory (DSPy's DummyLM): like ``_biased_lm``, and right on every example from sampled round
    ``right_from`` on (the trace rounds run on ``lm.copy(rollout_id=round - 1, ...)``)."""

    @staticmethod
    def make(task, right_negatives: int, right_from: int):
        from dspy.utils.dummies import DummyLM

        class LateRight(DummyLM):
            def copy(self, **kwargs):
                copied = super().copy(**kwargs)
                if kwargs.get("rollout_id", 0) + 1 >= right_from:
                    copied.answers = {e.text: {"label": e.label} for e in task.examples("train")}
                return copied

        biased = _biased_lm(task, right_negatives)
        return LateRight(biased.answers, adapter=dspy.JSONAdapter())


def test_extra_rounds_retry_the_failed_examples_of_a_short_label_until_it_catches_up(small_task):
    """extra_rounds: after the split, the failed examples of a label short of the others get more sampled
    rounds, numbered after max_rounds, until the label has as many passing examples (the quota, or the
    label with most); the counts say what the extra rounds cost and kept."""
    program = small_task.make_program()
    with dspy.context(lm=_LateRightLM.make(small_task, right_negatives=2, right_from=6)):
        plain = compile_training_data(program, small_task, balance=True, max_rounds=4, progress=False)
        extra = compile_training_data(program, small_task, balance=True, max_rounds=4, extra_rounds=4,
                                      progress=False)
        capped = compile_training_data(program, small_task, balance=True, max_rounds=4, extra_rounds=4,
                                       max_traces=10, progress=False)
    assert plain.manifest["labels"]["kept"] == {"negative": 2, "positive": 2}  # rounds 2-4 are still wrong
    assert "extra_attempts" not in plain.counts
    c, labels = extra.counts, extra.manifest["labels"]
    assert labels["kept"] == {"negative": 20, "positive": 20} and labels["dropped_metric"] == {}
    assert c["kept_by_round"] == {"1": 22, "6": 18} and c["extra_attempts"] == 18 * 2  # rounds 5 and 6 each
    assert c["attempts"] == plain.counts["attempts"] + c["extra_attempts"] and c["dropped_metric"] == 0
    assert extra.manifest["options"]["extra_rounds"] == 4
    # with a quota (max_traces 10: 5 a label) the retries stop once the label has 5
    assert capped.manifest["labels"]["kept"] == {"negative": 5, "positive": 5}
    assert capped.counts["kept_by_round"] == {"1": 7, "6": 3} and capped.counts["extra_attempts"] == 6
    with dspy.context(lm=_LateRightLM.make(small_task, right_negatives=0, right_from=99)):  # never right
        with pytest.raises(ExportError, match=r"\{'positive': 20\} .*\(40 run, 100 attempts, 40 of them extra "
                                              r"rounds for the labels short of traces\)"):
            compile_training_data(program, small_task, balance=True, max_rounds=2, extra_rounds=2, progress=False)
    with pytest.raises(ExportError, match="extra_rounds must be a non-negative integer"):
        compile_training_data(program, small_task, extra_rounds=-1)


def test_rounds_sample_again_where_the_greedy_answer_fails(lm, small_task):
    """max_rounds: a failing greedy answer is sampled again (temperature 1.0, seeded); the first passing one
    is kept. On the real model, zero-shot: the greedy pass keeps few negatives, later rounds add more."""
    program = small_task.make_program()
    with dspy.context(lm=lm):
        greedy = compile_training_data(program, small_task, progress=False)
        sampled = compile_training_data(program, small_task, max_rounds=4, progress=False)
    with dspy.context(lm=lm.copy(cache=False)):  # not from the cache: the seeds make it reproducible
        again = compile_training_data(program, small_task, max_rounds=4, progress=False)
    c, by_round = sampled.counts, sampled.counts["kept_by_round"]
    assert sum(by_round.values()) == c["kept_examples"] and by_round["1"] == greedy.counts["kept_examples"]
    assert set(by_round) - {"1"}, by_round  # some examples passed on a later round only
    failed_first = c["examples"] - by_round["1"]
    # a failing example gets up to 3 more attempts; one that passes on round r used r of them
    assert c["attempts"] == c["examples"] + sum((int(r) - 1) * n for r, n in by_round.items()) \
        + 3 * (c["examples"] - c["kept_examples"])
    assert failed_first > 0 and greedy.counts["attempts"] == greedy.counts["examples"] == 40
    kept = sampled.manifest["labels"]["kept"]
    assert kept.get("negative", 0) > greedy.manifest["labels"]["kept"].get("negative", 0)
    assert sampled.manifest["options"]["max_rounds"] == 4
    # every kept answer is still the gold one, and the seeded rollouts make the data reproducible
    gold = {e.text: e.label for e in small_task.examples("train")}
    for r in sampled.train:
        text = r["messages"][1]["content"].split("[[ ## text ## ]]\n", 1)[1].split("\n\n", 1)[0]
        assert json.loads(r["messages"][-1]["content"])["label"] == gold[text]
    assert [r["messages"] for r in again.train] == [r["messages"] for r in sampled.train]
    with pytest.raises(ExportError, match="max_rounds must be a positive integer"):
        compile_training_data(program, small_task, max_rounds=0)


def test_retry_calibration_answers_the_second_round_greedily_with_the_calibrated_choice(lm, small_task, caplog):
    """retry_calibration: round 2 runs the program with its label choice calibrated (the bias measured on
    content-free inputs, kept in the manifest), greedily; a failing first answer passes there exactly when the
    calibrated program answers the gold label. The records stay the program's own prompts and gold answers."""
    from autoprompt._calibration import label_bias
    from autoprompt.evaluate import evaluate_program

    program = small_task.make_program()
    with dspy.context(lm=lm):
        data = compile_training_data(program, small_task, limit=16, max_rounds=2, retry_calibration=1.0,
                                     progress=False)
    # the same 16 examples, the same requests (answered from the cache): plain, then calibrated, greedily
    with dspy.context(lm=lm, adapter=autoprompt.CompactJSONAdapter()):
        bias = label_bias(program.predictors()[0], field="label", choices=["positive", "negative"])
        plain = evaluate_program(program, small_task, "train", limit=16, progress=False)
        calibrated = program.deepcopy()
        calibrated.predictors()[0].config = {"logit_bias": bias}
        fixed = evaluate_program(calibrated, small_task, "train", limit=16, progress=False)
    assert list(data.manifest["retry_bias"].values()) == [bias]
    assert data.manifest["options"]["retry_calibration"] == 1.0
    right = lambda e: [r["predicted"] == r["gold"] for r in e.records]  # noqa: E731
    first, second = right(plain), right(fixed)
    assert data.counts["kept_by_round"] == {"1": sum(first), "2": sum(b and not a for a, b in zip(first, second))}
    assert data.counts["kept_by_round"]["2"] > 0  # the zero-shot 135M model's negatives, rescued greedily
    assert data.counts["attempts"] == 16 + 16 - sum(first)  # one greedy retry per failing example, no sampling
    gold = {e.text: e.label for e in small_task.examples("train")}
    for r in data.train:  # the program's prompt (no bias in it) and the gold answer
        text = r["messages"][1]["content"].split("[[ ## text ## ]]\n", 1)[1].split("\n\n", 1)[0]
        assert json.loads(r["messages"][-1]["content"])["label"] == gold[text]
    assert program.predictors()[0].config.get("logit_bias") is None  # the caller's program is untouched

    # not offered where it cannot be measured (an LM other than the embedded engine): logged, rounds sample
    from dspy.utils.dummies import DummyLM

    with caplog.at_level("INFO", logger="autoprompt.export._training"), \
            dspy.context(lm=DummyLM([{"label": "positive"}] * 40, adapter=dspy.JSONAdapter())):
        other = compile_training_data(program, small_task, limit=8, max_rounds=2, retry_calibration=1.0,
                                      progress=False)
    assert other.manifest["retry_bias"] == {} and "no label choice to calibrate" in caplog.text
    with pytest.raises(ExportError, match="retry_calibration must be a strength in \\[0, 1\\], got 2"):
        compile_training_data(program, small_task, retry_calibration=2)


def test_dedupe_removes_repeated_rows(small_task):
    """A train split with every row twice: dedupe keeps one record per distinct prompt and answer and counts the
    rest; without it both copies stay (gold answers: no LM call, pure logic)."""
    program = small_task.make_program()
    rows = [dict(e) for e in small_task.examples("train", seed=None)][:6]
    doubled = autoprompt.Task(name="twice", program=small_task.signature, train=rows + rows, dev=rows)
    kept = compile_training_data(program, doubled, answers="gold", progress=False)
    assert kept.counts["duplicates"] == 6 and kept.counts["records"] == 6 and len(kept.train) == 6
    both = compile_training_data(program, doubled, answers="gold", dedupe=False, progress=False)
    assert both.counts["duplicates"] == 0 and len(both.train) == 12


def test_rollout_seeds_differ_per_example_and_round(small_task):
    from autoprompt.export._training import rollout_seed

    examples = small_task.examples("train", seed=None)[:20]
    seeds = {rollout_seed(0, e, r) for e in examples for r in (2, 3, 4)}
    assert len(seeds) == 60  # independent draws, not one per round
    assert rollout_seed(0, examples[0], 2) == rollout_seed(0, examples[0], 2) != rollout_seed(1, examples[0], 2)


def _balanced(kept: dict[str, int], min_share: float = 0.1, max_share: float = 0.1):
    """Pure logic of the balancing on ``kept`` passing examples per label: ``(kept after, rare, labels, counts)``;
    the labels' and counts' bookkeeping (what the manifest says) matches the records kept."""
    from types import SimpleNamespace

    from autoprompt.export._training import _balance

    records = [{"label": label, "example": f"{label}{i}"} for label, n in kept.items() for i in range(n)]
    labels = {"kept": dict(kept), "dropped_balance": {}}
    counts = {"dropped_balance": 0, "kept_examples": sum(kept.values()), "examples": 50, "attempts": 50}
    out, _, rare = _balance(records, list(kept), labels, counts, SimpleNamespace(name="t"), "train", min_share,
                            max_share)
    got = {label: sum(r["label"] == label for r in out) for label in kept}
    assert got == labels["kept"] and counts["kept_examples"] == len(out)
    return got, rare, labels, counts


def test_a_rare_label_keeps_its_few_examples_and_does_not_cap_the_others():
    """20 / 16 / 1 passing examples with min_label_share 0.1 keep 16 / 16 / 1 (the rare label reported), not
    1 / 1 / 1; with two labels the rarest always sets the cap."""
    got, rare, labels, counts = _balanced({"setosa": 20, "versicolor": 16, "virginica": 1}, 0.1)
    assert got == {"setosa": 16, "versicolor": 16, "virginica": 1} and rare == ["virginica"]
    assert labels["dropped_balance"] == {"setosa": 4} and counts["kept_examples"] == 33
    assert _balanced({"setosa": 20, "versicolor": 16, "virginica": 1}, 0.0)[0] == {"setosa": 1, "versicolor": 1,
                                                                                  "virginica": 1}
    assert _balanced({"positive": 500, "negative": 20}, 0.1)[:2] == ({"positive": 20, "negative": 20}, [])


def test_many_labels_are_cut_only_as_far_as_no_label_dominates():
    """With max_label_share 0.1, ten labels or fewer balance exactly (the Iris and SST-2 cells' counts give
    what they gave); Banking77's zero-shot traces (seed 0's histogram: 61 intents, 1 to 10 each, 242 in all)
    keep all 242 instead of 61; a lopsided many-label set is cut until its largest label holds at most a
    tenth of the data; max_label_share=0 is exact balance at any number of labels."""
    from autoprompt.export._training import _cap

    def run(kept: dict[str, int], max_share: float = 0.1) -> dict[str, int]:
        return _balanced(kept, 0.1, max_share)[0]

    # ten labels or fewer: exact balance, as before (counts of the committed Iris/SST-2 cells)
    assert run({"setosa": 19, "versicolor": 7, "virginica": 12}) == {"setosa": 7, "versicolor": 7, "virginica": 7}
    assert run({"setosa": 21, "versicolor": 3}) == {"setosa": 3, "versicolor": 3}
    assert run({"positive": 500, "negative": 77}) == {"positive": 77, "negative": 77}
    ten = {f"l{i}": 5 + i for i in range(10)}
    assert set(run(ten).values()) == {5}
    # Banking77 seed 0's zero-shot traces, as its manifest counts them (kept + dropped_balance)
    histogram = {10: 7, 9: 1, 8: 3, 7: 3, 6: 3, 5: 4, 4: 4, 3: 7, 2: 14, 1: 15}  # traces per intent: intents
    sizes = [n for n, intents in histogram.items() for _ in range(intents)]
    assert len(sizes) == 61 and sum(sizes) == 242
    intents = {f"intent{i}": n for i, n in enumerate(sizes)}
    assert run(intents) == intents
    assert set(run(intents, max_share=0.0).values()) == {1}  # the old rule: 61 of 242
    # one intent with 100 traces beside 20 with 2 each: cut to 4 (4 of 44 is 9%; 5 of 45 would be 11%)
    lopsided = {"big": 100, **{f"small{i}": 2 for i in range(20)}}
    got = run(lopsided)
    assert got["big"] == _cap([100] + [2] * 20, 0, 0.1) == 4 and 4 <= 0.1 * sum(got.values())


def test_without_a_progress_bar_a_long_pass_logs_how_far_it_got(small_task, monkeypatch, caplog):
    """progress=False (benchmarks, logs to a file): an INFO line every PROGRESS_LOG_SECONDS (0 here: one per
    example) for the main pass and the extra rounds; with the bar on, none (the bar says it)."""
    from autoprompt.export import _training

    monkeypatch.setattr(_training, "PROGRESS_LOG_SECONDS", 0.0)
    program = small_task.make_program()
    with caplog.at_level("INFO", logger="autoprompt.export._training"):
        with dspy.context(lm=_LateRightLM.make(small_task, right_negatives=2, right_from=3)):
            compile_training_data(program, small_task, balance=True, extra_rounds=2, max_traces=10,
                                  progress=False)
    visited = [r.getMessage() for r in caplog.records if "examples visited" in r.getMessage()]
    retried = [r.getMessage() for r in caplog.records if "failed examples retried" in r.getMessage()]
    assert visited[0] == "training data: 0 of 40 train examples visited, 0 kept of 10 wanted, 0 attempts"
    assert len(visited) == 40 and visited[-1].startswith("training data: 39 of 40 train examples visited, 7 kept")
    assert retried and retried[0].startswith("training data: extra rounds, 0 of ")
    caplog.clear()
    with caplog.at_level("INFO", logger="autoprompt.export._training"):
        with dspy.context(lm=_biased_lm(small_task, right_negatives=5)):
            compile_training_data(program, small_task, balance=True, progress=True)
    assert not [r for r in caplog.records if "examples visited" in r.getMessage()]


def test_max_attempts_stops_the_pass_and_builds_the_data_from_what_was_kept(small_task):
    """max_attempts: once that many program runs are spent the pass stops, what passed is balanced as usual and
    counts.unvisited says what the cap left; the extra rounds stop at the cap too (stub LM: pure logic)."""
    program = small_task.make_program()
    lm = _biased_lm(small_task, right_negatives=20)
    with dspy.context(lm=lm):
        data = compile_training_data(program, small_task, balance=True, max_attempts=10, progress=False)
    c = data.counts
    assert c["attempts"] == 10 == len(lm.history) and c["examples"] == 10 and c["unvisited"] == 30
    assert sum(data.manifest["labels"]["kept"].values()) == c["kept_examples"] <= 10
    assert data.manifest["options"]["max_attempts"] == 10
    with dspy.context(lm=_LateRightLM.make(small_task, right_negatives=2, right_from=6)):
        unlimited = compile_training_data(program, small_task, balance=True, max_rounds=4, extra_rounds=4,
                                          progress=False)
        capped = compile_training_data(program, small_task, balance=True, max_rounds=4, extra_rounds=4,
                                       max_attempts=unlimited.counts["attempts"] - 10, progress=False)
    assert unlimited.counts["unvisited"] == 0 and capped.counts["unvisited"] == 0  # the split was visited
    assert unlimited.counts["attempts"] - 10 <= capped.counts["attempts"] < unlimited.counts["attempts"]
    assert capped.counts["extra_attempts"] < unlimited.counts["extra_attempts"]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ExportError, match="max_attempts must be a positive integer or None"):
            compile_training_data(program, small_task, max_attempts=bad)
