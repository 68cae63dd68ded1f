"""The neighbours' label prior (autoprompt._vote_prior): its logit_bias against a hand computation, the
predictor that adds it to each call (on top of a calibration) and its spec. Pure logic: DSPy's DummyLM (a stub
LM) where a call is made."""

from __future__ import annotations

import copy
import math

import dspy
import pytest

from autoprompt._vote_prior import LabelPrior, attach_prior, detach_prior, prior_of
from tests.test_retrieval import POOL

CHOICES, IDS = ["positive", "negative"], [101, 202]


def test_the_prior_is_the_weighted_log_share_of_the_neighbours_labels_centred():
    prior = LabelPrior(POOL, ["text"], "label", CHOICES, IDS, k=3, weight=2.0, bias={"negative": -0.5})
    counts = prior.counts({"text": "dull film"})
    assert counts == {"positive": 1, "negative": 2}  # the two dull ones and the film, nearest first
    pos = 2.0 * math.log(1.5 / 4.0)
    neg = 2.0 * math.log(2.5 / 4.0) - 0.5
    centre = (pos + neg) / 2
    assert prior({"text": "dull film"}) == {"101": round(pos - centre, 4), "202": round(neg - centre, 4)}
    # an example equal to the input is never its own neighbour (as for retrieved demos)
    assert sum(prior.counts({"text": "rain all day"}).values()) == 3
    assert LabelPrior(POOL, ["text"], "label", CHOICES, IDS, k=3, weight=0.0)({"text": "dull"}) == {"101": 0.0,
                                                                                                    "202": 0.0}


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "k must be >= 1"),
    ({"token_ids": [7, 7]}, "share a first token"),
    ({"token_ids": [7]}, "one first token per label"),
    ({"bias": {"neutral": 1.0}}, "not choices"),
])
def test_a_prior_that_cannot_work_is_refused(kwargs, message):
    args = {"k": 3, "token_ids": IDS, **kwargs}
    with pytest.raises(ValueError, match=message):
        LabelPrior(POOL, ["text"], "label", CHOICES, args.pop("token_ids"), **args)


def test_an_attached_predictor_adds_the_prior_to_its_calibration_at_each_call_and_survives_copies():
    from dspy.utils.dummies import DummyLM

    program = dspy.Predict("text -> label")
    program.config = {"logit_bias": {"101": 1.0, "202": -1.0}}  # a calibration
    prior = LabelPrior(POOL, ["text"], "label", CHOICES, IDS, k=3)
    attach_prior(program, prior)
    assert isinstance(program, dspy.Predict) and prior_of(program) is prior
    lm = DummyLM([{"label": "negative"}] * 2, adapter=dspy.JSONAdapter())
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        program(text="dull film")
        program(text="moving film")
    sent = [entry["kwargs"]["logit_bias"] for entry in lm.history]
    for entry, text in zip(sent, ["dull film", "moving film"]):
        expected = prior({"text": text})
        assert entry == {"101": round(1.0 + expected["101"], 4), "202": round(-1.0 + expected["202"], 4)}
    assert sent[0] != sent[1]  # per call: other neighbours, another bias
    assert program.config == {"logit_bias": {"101": 1.0, "202": -1.0}}  # the static config is untouched
    copied = copy.deepcopy(program)
    assert prior_of(copied) is not None and prior_of(copied)({"text": "dull"}) == prior({"text": "dull"})
    attach_prior(copied, LabelPrior(POOL, ["text"], "label", CHOICES, IDS, k=1))  # replaces, one level deep
    assert type(copied) is type(program) and prior_of(copied).k == 1
    detach_prior(program)
    assert type(program) is dspy.Predict and prior_of(program) is None


def test_the_spec_rebuilds_the_same_prior():
    prior = LabelPrior(POOL, ["text"], "label", CHOICES, IDS, k=4, weight=0.5, bias={"positive": 0.25})
    spec = prior.spec()
    assert spec["method"] == "bm25-label-counts" and spec["pool"] == POOL and spec["k"] == 4
    again = LabelPrior.from_spec(copy.deepcopy(spec))
    assert again.spec() == spec
    for text in ("dull film", "moving and wise", "rain"):
        assert again({"text": text}) == prior({"text": text})
    with pytest.raises(ValueError, match="not known"):
        LabelPrior.from_spec({**spec, "method": "embeddings"})
