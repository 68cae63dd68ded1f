"""Per-input demos (autoprompt._retrieval): BM25 against a hand computation, the neighbours a call gets, the
predictor that sends them, and their way through the search's parameters, the prompt file and the exports.
Pure logic: DSPy's DummyLM (a stub LM) where a call is made."""

from __future__ import annotations

import copy
import json
import math

import dspy
import pytest

import autoprompt
from autoprompt._retrieval import (BM25, Retriever, attach, choose_k, demos_for, detach, neighbour_votes, retriever_of,
                                   tokenize)
from autoprompt.export import export_prompt, prompt_document, read_prompt, render_messages

POOL = [
    {"text": "a gripping and moving film", "label": "positive"},
    {"text": "a dull , lifeless film", "label": "negative"},
    {"text": "the acting is wooden and dull", "label": "negative"},
    {"text": "moving , funny and wise", "label": "positive"},
    {"text": "rain all day", "label": "negative"},
]


def test_bm25_matches_the_formula_by_hand():
    index = BM25([tokenize(p["text"]) for p in POOL])
    n, lengths = 5, [5, 4, 6, 4, 3]  # "," is not a token
    avg = sum(lengths) / n

    def term(df: int, length: int) -> float:
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        return idf * 2.5 / (1 + 1.5 * (1 - 0.75 + 0.75 * length / avg))

    got = index.scores(tokenize("Dull FILM, dull!"))  # case-insensitive; a repeated query token counts once
    want = [term(2, 5), 2 * term(2, 4), term(2, 6), 0.0, 0.0]  # film in 0-1, dull in 1-2
    assert got.tolist() == pytest.approx(want)
    assert index.scores(tokenize("nothing in common")).tolist() == [0.0] * 5


def test_retriever_gives_the_nearest_best_last_and_never_the_input_itself():
    retriever = Retriever(POOL, ["text"], k=2)
    demos = retriever({"text": "dull film"})
    assert [d.text for d in demos] == ["a gripping and moving film", "a dull , lifeless film"]  # best last; the shorter text first
    assert list(demos[1].inputs().keys()) == ["text"] and demos[1].label == "negative"
    # an input equal to a pool example does not get itself (its own answer) as a demo
    assert POOL[0]["text"] not in [d.text for d in retriever({"text": POOL[0]["text"]})]
    # ties (no shared token) go to the earlier pool examples: deterministic
    assert [d.text for d in retriever({"text": "xyz"})] == [POOL[1]["text"], POOL[0]["text"]]
    assert Retriever(POOL, ["text"], k=0)({"text": "dull"}) == []
    # tokens belong to a field: a value matches the same value of the same field only
    flowers = [{"a": 5.1, "b": 1.8, "y": "x"}, {"a": 1.8, "b": 5.1, "y": "z"}, {"a": 5.1, "b": 0.2, "y": "x"}]
    assert [d.y for d in Retriever(flowers, ["a", "b"], k=1)({"a": 1.8, "b": 9.9})] == ["z"]
    assert [d.b for d in Retriever(flowers, ["a", "b"], k=2)({"a": 5.1, "b": 7.0})] == [0.2, 1.8]  # tie: earlier best
    with pytest.raises(ValueError, match="k must be"):
        Retriever(POOL, ["text"], k=-1)


def test_vote_order_puts_the_label_most_neighbours_carry_next_to_the_input():
    query = {"text": "a gripping film, dull acting"}
    nearest = [d.text for d in Retriever(POOL, ["text"], k=3)(query)]
    # by similarity the nearest (positive) is last, but two of the three are negative
    assert nearest == [POOL[2]["text"], POOL[1]["text"], POOL[0]["text"]]
    by_vote = Retriever(POOL, ["text"], k=3, order="vote", label_field="label")
    demos = by_vote(query)
    assert [d.label for d in demos] == ["positive", "negative", "negative"]
    assert [d.text for d in demos] == [POOL[0]["text"], POOL[2]["text"], POOL[1]["text"]]  # each group nearest last
    # a tie (2 and 2) goes to the label of the nearest demo
    four = Retriever(POOL, ["text"], k=4, order="vote", label_field="label")(query)
    assert [d.text for d in four] == [POOL[2]["text"], POOL[1]["text"], POOL[3]["text"], POOL[0]["text"]]
    assert by_vote.spec()["order"] == "vote" and by_vote.spec()["label_field"] == "label"
    assert "order" not in Retriever(POOL, ["text"], k=3).spec()  # similarity documents keep their bytes
    assert [d.text for d in Retriever.from_spec(by_vote.spec())(query)] == [d.text for d in demos]
    with pytest.raises(ValueError, match="order must be one of \\['similarity', 'vote'\\]"):
        Retriever(POOL, ["text"], k=3, order="random")
    with pytest.raises(ValueError, match="needs the label_field"):
        Retriever(POOL, ["text"], k=3, order="vote")


def test_the_neighbour_vote_answers_every_k_at_once_and_keeps_the_smallest_best_k():
    query = {"text": "a gripping film, dull acting"}
    # the nearest is positive, two of the three nearest negative, four split 2-2: the tie goes to the nearest
    assert neighbour_votes(POOL, ["text"], "label", [query], (1, 3, 4)) == [{1: "positive", 3: "negative",
                                                                              4: "positive"}]
    assert neighbour_votes([], ["text"], "label", [query], (1,)) == [{1: None}]
    assert choose_k({4: 0.80, 8: 0.82, 16: 0.82}) == 8  # ties go to the smaller k
    assert choose_k({16: 0.9, 2: 0.5}) == 16


def test_an_attached_predictor_sends_the_retrieved_demos_and_survives_copies():
    from dspy.utils.dummies import DummyLM

    program = dspy.Predict("text -> label")
    program.demos = [dspy.Example(text="fixed demo", label="positive")]
    attach(program, Retriever(POOL, ["text"], k=2))
    assert program.demos == [] and isinstance(program, dspy.Predict)
    lm = DummyLM([{"label": "negative"}] * 2, adapter=dspy.JSONAdapter())
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert program(text="so dull").label == "negative"
    sent = json.dumps(lm.history[-1]["messages"])
    assert "the acting is wooden and dull" in sent and "a dull , lifeless film" in sent
    assert "rain all day" not in sent
    copied = copy.deepcopy(program)
    assert retriever_of(copied) is not None and retriever_of(copied).pool == POOL
    assert [d.text for d in demos_for(copied, {"text": "so dull"})] == [d.text for d in demos_for(program, {"text": "so dull"})]
    attach(copied, Retriever(POOL, ["text"], k=1))  # attaching again replaces, the class stays one level deep
    assert type(copied) is type(program) and len(demos_for(copied, {"text": "dull"})) == 1
    detach(program)
    assert type(program) is dspy.Predict and retriever_of(program) is None
    assert demos_for(program, {"text": "dull"}) == []


def test_retrieval_travels_through_the_prompt_file_and_the_exports(small_task, tmp_path):
    program = small_task.make_program()
    (predictor,) = program.predictors()
    pool = [{"text": e.text, "label": e.label} for e in small_task.examples("train")]
    attach(predictor, Retriever(pool, ["text"], k=3))
    document = prompt_document(program, task=small_task)
    assert document["format_version"] == 2  # readers that predate retrieval refuse it instead of dropping it
    spec = document["predictors"][0]["retrieval"]
    assert spec["method"] == "bm25" and spec["k"] == 3 and spec["pool"] == pool
    assert prompt_document(small_task.make_program(), task=small_task)["format_version"] == 1

    path = export_prompt(document, tmp_path / "prompt.json", format="json")
    reloaded = autoprompt.load_prompt(path, small_task)
    query = {"text": small_task.examples("test")[0].text}
    assert demos_for(reloaded.predictors()[0], query) == demos_for(predictor, query)
    rendered = render_messages(read_prompt(path), query)
    assert len(rendered) == 2 + 2 * 3  # system, 3 demo turns (user + assistant), the input
    assert dspy.JSONAdapter().format(predictor.signature, demos_for(predictor, query), query) == rendered

    messages = json.loads(export_prompt(document, tmp_path / "p.messages.json", format="messages").read_text())
    entry = messages["predictors"][0]
    assert len(entry["messages"]) == 2 and entry["demos_per_input"]["pool"] == pool
    assert "BM25" in entry["demos_per_input"]["rule"]
    text = export_prompt(document, tmp_path / "p.txt", format="text").read_text()
    assert f"3 nearest of {len(pool)} labelled examples" in text and "cannot carry them" in text

    # demos ordered by vote: format_version 3 (a reader of 2 would order them by similarity), the same demos
    # rendered from the file as the program sends, and the rule says how
    attach(predictor, Retriever(pool, ["text"], k=3, order="vote", label_field="label"))
    voted = prompt_document(program, task=small_task)
    assert voted["format_version"] == 3 and voted["predictors"][0]["retrieval"]["order"] == "vote"
    path = export_prompt(voted, tmp_path / "voted.json", format="json")
    assert render_messages(read_prompt(path), query) == dspy.JSONAdapter().format(
        predictor.signature, demos_for(predictor, query), query)
    assert retriever_of(autoprompt.load_prompt(path, small_task).predictors()[0]).order == "vote"
    rule = json.loads(export_prompt(voted, tmp_path / "v.messages.json", format="messages").read_text())
    assert "'order' 'vote'" in rule["predictors"][0]["demos_per_input"]["rule"]

    document["predictors"][0]["retrieval"]["method"] = "dense"
    with pytest.raises(autoprompt.ExportError, match="'dense' is not known"):
        autoprompt.load_prompt(document, small_task)


def test_the_search_offers_retrieved_demos_and_exports_the_winner(small_task, tmp_path):
    """``retrieved_demos=True``: the pool holds the labelled train split, a trial samples ``self.retrieve``
    (and no demo set when it retrieves), and the program it stands for retrieves with ``n_demos``."""
    from dspy.utils.dummies import DummyLM

    from autoprompt.optimizers.optuna._trial import build_program

    lm = DummyLM([{"label": "positive"}] * 400, adapter=dspy.JSONAdapter())
    result = autoprompt.optimize(small_task, lm=lm, run_dir=tmp_path / "run", dev_limit=4, progress=False,
                                 optimizer="optuna", n_trials=8, n_instructions=0, n_demo_sets=1, max_demos=2,
                                 minibatches=(4,), pruner="none", retrieved_demos=True)
    pool = result.study.user_attrs["pool"]["predictors"]["self"]
    assert len(pool["retrieval"]) == len(small_task.examples("train"))
    trials = result.study.trials
    # the warm start: the first trial is the task's own instruction with per-input demos ordered by vote
    # (max_demos=2: below the counts the warm start chooses from, so 2)
    assert trials[0].params == {"self.instruction": 0, "self.n_demos": 2, "self.retrieve": True,
                                "self.demo_order": "vote"}
    assert {t.params.get("self.retrieve") for t in trials[1:]} >= {False, True}  # then seeded TPE startup trials
    for trial in trials:
        n_demos = trial.params["self.n_demos"]
        # where demos come from is sampled only for a trial that takes some: retrieved or a fixed set
        assert ("self.retrieve" in trial.params) == (n_demos > 0)
        assert ("self.demo_set" in trial.params) == (n_demos > 0 and not trial.params["self.retrieve"])
        program = build_program(small_task, result.study.user_attrs["pool"], trial.params)
        retriever = retriever_of(program.predictors()[0])
        assert (retriever is not None) == bool(trial.params.get("self.retrieve"))
        if retriever is not None:
            assert retriever.k == n_demos
    document = json.loads((result.run_dir / "prompt.json").read_text())
    best = result.study.trials[result.optimizer.best_trial_].params  # the trial the search chose
    assert ("retrieval" in document["predictors"][0]) == bool(best.get("self.retrieve"))


def test_the_search_orders_retrieved_demos_by_vote_when_asked(small_task, tmp_path):
    """``demo_order="search"``: a retrieving trial samples ``self.demo_order`` (the warm start takes vote)
    and its program's retriever uses it; ``"vote"``: every retrieving trial votes, no parameter; a value
    that does not exist is one line naming the choices."""
    from dspy.utils.dummies import DummyLM

    from autoprompt.optimizers.optuna._trial import build_program

    lm = DummyLM([{"label": "positive"}] * 400, adapter=dspy.JSONAdapter())
    common = dict(lm=lm, dev_limit=4, progress=False, optimizer="optuna", n_trials=8, n_instructions=0,
                  n_demo_sets=1, max_demos=2, minibatches=(4,), pruner="none", calibrate=False)
    result = autoprompt.optimize(small_task, run_dir=tmp_path / "search", demo_order="search", **common)
    pool = result.study.user_attrs["pool"]
    assert pool["predictors"]["self"]["demo_orders"] == ["similarity", "vote"]
    trials = result.study.trials
    assert trials[0].params["self.demo_order"] == "vote"
    retrieving = [t for t in trials if t.params.get("self.retrieve")]
    assert all("self.demo_order" in t.params for t in retrieving)
    assert not any("self.demo_order" in t.params for t in trials if not t.params.get("self.retrieve"))
    for trial in retrieving:
        retriever = retriever_of(build_program(small_task, pool, trial.params).predictors()[0])
        assert retriever.order == trial.params["self.demo_order"] and retriever.label_field in (None, "label")

    by_similarity = autoprompt.optimize(small_task, run_dir=tmp_path / "sim", demo_order="similarity", **common)
    assert "demo_orders" not in by_similarity.study.user_attrs["pool"]["predictors"]["self"]  # as before the option
    assert by_similarity.study.trials[0].params == {"self.instruction": 0, "self.n_demos": 2, "self.retrieve": True}
    voted = autoprompt.optimize(small_task, run_dir=tmp_path / "vote", demo_order="vote", **common)
    pool = voted.study.user_attrs["pool"]
    assert pool["predictors"]["self"]["demo_orders"] == ["vote"]
    first = voted.study.trials[0]
    assert "self.demo_order" not in first.params and first.params["self.retrieve"]
    assert retriever_of(build_program(small_task, pool, first.params).predictors()[0]).order == "vote"
    with pytest.raises(autoprompt.OptionError, match="demo_order must be one of \\['similarity', 'vote', 'search'\\]"):
        autoprompt.optimizers.get_optimizer("optuna", demo_order="nearest")


def test_the_warm_start_takes_as_many_demos_as_make_their_vote_best_on_dev():
    """No LM: 3 near neighbours say 'n', 5 farther ones 'p', the gold is 'p': 4 demos vote wrong, 8 right."""
    from autoprompt.optimizers.optuna._pool import _warm_start

    rows = [{"text": "x", "label": "p"}]
    task = autoprompt.Task(name="toy", program="text -> label", train=rows, dev=rows, choices=["p", "n"])
    pool = [{"text": f"x y n{i}", "label": "n"} for i in range(3)] + [{"text": f"x p{i}", "label": "p"} for i in range(5)]
    dev = [dspy.Example(text="x y", label="p").with_inputs("text")]
    chosen = _warm_start(pool, ["text"], task, dev, max_demos=8)
    assert chosen == {"n_demos": 8, "demo_order": "vote", "vote_dev": {"4": 0.0, "8": 1.0}}
    assert _warm_start(pool, ["text"], task, [dspy.Example(text="x y", label="n").with_inputs("text")],
                       max_demos=8)["n_demos"] == 4  # the gold 'n': 4 right, 8 wrong
    assert _warm_start(pool, ["text"], task, dev, max_demos=4) == {"n_demos": 4, "demo_order": "vote"}  # one count
