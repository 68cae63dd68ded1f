"""A prior from the neighbours' labels, added to a predictor's label choice at every call.

The 135M model shown its neighbours as demos copies their vote and adds nothing (``retrieval_ceiling.md``);
given 4 fixed demos and the vote of its 64 BM25-nearest train examples as a prior on the label's logit, it
scores above both (SST-2 test 78.7-80.7% over three demo seeds against the 64-vote's 75.5 and the prompt's
own 47.9-63.8; ``benchmarks/results/vote_prior.md``). The prior is, per label ``l`` of the choice,

    weight * log((n_l + 0.5) / (k + 0.5 * L)) + bias_l      (centred over the L labels)

``n_l`` how many of the ``k`` nearest pool examples carry ``l`` (:class:`autoprompt._retrieval.Retriever`:
its index, tokens, ties and the exclusion of an example equal to the input), added as an OpenAI
``logit_bias`` to the first token of each label at each call; with the labels starting with different tokens
(what :func:`autoprompt._calibration.label_bias` checks) the grammar-constrained greedy choice then compares
``log p(l | prompt) + prior_l``. A static ``logit_bias`` already in the predictor's config (a calibration) is
added to it. Token ids belong to the embedded engine's tokenizer, as for calibration.
"""

from __future__ import annotations

import math
from typing import Any

import dspy

from autoprompt._retrieval import Retriever

__all__ = ["LabelPrior", "attach_prior", "detach_prior", "prior_of"]

MAX_BIAS = 100.0  # OpenAI's range for logit_bias values


class LabelPrior:
    """The per-call ``logit_bias`` of the neighbours' label counts (see the module docstring).

    Args:
        pool: labelled examples (input fields and ``label_field``), e.g. the train split.
        input_fields: the fields the neighbours are found by.
        label_field: the field whose labels are counted.
        choices: the labels, in the order of ``token_ids``.
        token_ids: each label's first token (``LocalEngine.first_tokens``).
        k: neighbours counted.
        weight: the prior's weight (0: none).
        bias: a fixed logit added per label (a calibration), by label.

    Example:
        >>> pool = [{"text": "a fine film", "label": "positive"}, {"text": "a fine plot", "label": "positive"},
        ...         {"text": "a dull film", "label": "negative"}]
        >>> prior = LabelPrior(pool, ["text"], "label", ["positive", "negative"], [11, 22], k=3)
        >>> prior.counts({"text": "fine film"})
        {'positive': 2, 'negative': 1}
        >>> prior({"text": "fine film"})  # log(2.5 / 4) - log(1.5 / 4), centred
        {'11': 0.2554, '22': -0.2554}
    """

    method = "bm25-label-counts"

    def __init__(self, pool: list[dict[str, Any]], input_fields: list[str], label_field: str, choices: list[str],
                 token_ids: list[int], *, k: int = 64, weight: float = 1.0, bias: dict[str, float] | None = None
                 ) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if len(choices) < 2 or len(choices) != len(token_ids):
            raise ValueError(f"need one first token per label and at least two labels; got {choices} / {token_ids}")
        if len(set(token_ids)) < len(token_ids):
            raise ValueError(f"labels {choices} share a first token: a logit_bias cannot tell them apart")
        unknown = set(bias or {}) - set(choices)
        if unknown:
            raise ValueError(f"bias names labels that are not choices: {sorted(unknown)}")
        self.label_field = label_field
        self.choices = [str(c) for c in choices]
        self.token_ids = [int(t) for t in token_ids]
        self.k = int(k)
        self.weight = float(weight)
        self.bias = {str(label): float(v) for label, v in (bias or {}).items()}
        self.retriever = Retriever(pool, input_fields, self.k)

    def counts(self, inputs: dict[str, Any]) -> dict[str, int]:
        """How many of the ``k`` nearest pool examples carry each label."""
        labels = [str(d[self.label_field]) for d in self.retriever(inputs)]
        return {label: labels.count(label) for label in self.choices}

    def log_shares(self, inputs: dict[str, Any]) -> list[float]:
        """``ln((n_l + 0.5) / (k' + 0.5 L))`` per label of ``choices`` (``k'`` the neighbours counted)."""
        counts = self.counts(inputs)
        total = sum(counts.values())
        return [math.log((counts[label] + 0.5) / (total + 0.5 * len(self.choices))) for label in self.choices]

    def __call__(self, inputs: dict[str, Any]) -> dict[str, float]:
        """The ``logit_bias`` (token id as a string -> added logit) for a call with ``inputs``."""
        raw = [self.weight * share + self.bias.get(label, 0.0)
               for label, share in zip(self.choices, self.log_shares(inputs))]
        centre = sum(raw) / len(raw)
        return {str(t): round(max(-MAX_BIAS, min(MAX_BIAS, r - centre)), 4) for t, r in zip(self.token_ids, raw)}

    def spec(self) -> dict[str, Any]:
        """What a prompt document stores to rebuild this prior (the pool included, as for retrieval)."""
        retriever = self.retriever.spec()
        return {"method": self.method, "k": self.k, "weight": self.weight, "bias": dict(sorted(self.bias.items())),
                "label_field": self.label_field, "choices": self.choices, "token_ids": self.token_ids,
                "input_fields": retriever["input_fields"], "pool": retriever["pool"],
                "retrieval": {"method": retriever["method"], "k1": retriever["k1"], "b": retriever["b"]}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LabelPrior":
        if spec.get("method") != cls.method:
            raise ValueError(f"label prior method {spec.get('method')!r} is not known; this autoprompt "
                             f"computes {cls.method!r}")
        return cls(spec["pool"], spec["input_fields"], spec["label_field"], spec["choices"], spec["token_ids"],
                   k=int(spec["k"]), weight=float(spec["weight"]), bias=spec.get("bias"))


class _Priored:
    """Mixed into a predictor's class by :func:`attach_prior`: the prior added to its ``logit_bias`` per call."""

    label_prior: LabelPrior

    def _with_prior(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        config = dict(kwargs.pop("config", None) or {})
        inputs = {f: kwargs[f] for f in self.signature.input_fields if f in kwargs}  # type: ignore[attr-defined]
        merged = {str(t): float(v) for t, v in (config.get("logit_bias") or self.config.get("logit_bias")  # type: ignore[attr-defined]
                                                or {}).items()}
        for token, value in self.label_prior(inputs).items():
            merged[token] = round(max(-MAX_BIAS, min(MAX_BIAS, merged.get(token, 0.0) + value)), 4)
        kwargs["config"] = {**config, "logit_bias": merged}
        return kwargs

    def forward(self, **kwargs: Any) -> Any:
        return super().forward(**self._with_prior(kwargs))  # type: ignore[misc]

    async def aforward(self, **kwargs: Any) -> Any:
        return await super().aforward(**self._with_prior(kwargs))  # type: ignore[misc]


_CLASSES: dict[type, type] = {}


def attach_prior(predictor: dspy.Predict, prior: LabelPrior) -> None:
    """Add ``prior`` to ``predictor``'s label choice at every call (replacing a prior attached before)."""
    detach_prior(predictor)
    base = type(predictor)
    cls = _CLASSES.get(base)
    if cls is None:  # a subclass of the predictor's own class (DSPy's metaclass included)
        cls = _CLASSES[base] = type(base)(f"Priored{base.__name__}", (_Priored, base), {"_unprimed": base})
    predictor.__class__ = cls
    predictor.label_prior = prior


def detach_prior(predictor: dspy.Predict) -> None:
    """Undo :func:`attach_prior`."""
    if isinstance(predictor, _Priored):
        predictor.__class__ = type(predictor)._unprimed  # type: ignore[attr-defined]
        del predictor.label_prior


def prior_of(predictor: Any) -> LabelPrior | None:
    """The label prior attached to ``predictor``, if any."""
    return predictor.label_prior if isinstance(predictor, _Priored) else None
