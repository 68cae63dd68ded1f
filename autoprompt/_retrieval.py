"""Per-input demos: the labelled train examples most similar to the input of a call, found by BM25.

A predictor with a :class:`Retriever` attached (:func:`attach`) picks its demos per call: the ``k``
examples of its pool whose input fields score highest (Okapi BM25; a token is a word or number of one
field, so ``petal_length:5.1`` matches only the same value of the same field) against the call's inputs, the most
similar last (next to the input), an example whose inputs equal the call's skipped (so a program run over
its own pool never sees the answer as a demo). Everything is deterministic: ties go to the earlier pool
example. With ``order="vote"`` the same ``k`` demos are grouped by label, the label most of them carry
last (ties: the label of the nearest demo), each group nearest last: a small model that copies the
label next to the input then answers the neighbours' vote (:func:`vote`) rather than the nearest one's.

Why BM25 written here rather than a library: the retrieval pool is at most a train split (thousands of
short texts), the score is a few lines of numpy over an inverted index, and the libraries that ship it
(``rank_bm25``, scikit-learn's TF-IDF, ``bm25s``) are dependencies autoprompt does not otherwise need; the
messages export spells out the same rule so that a client without autoprompt can apply it.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import dspy
import numpy as np

__all__ = ["BM25", "ORDERS", "Retriever", "attach", "choose_k", "demos_for", "detach", "field_tokens",
           "neighbour_votes", "retriever_of", "tokenize", "vote"]

TOKEN = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")
K1 = 1.5
B = 0.75
#: how a retriever orders its demos: by similarity (nearest last), or grouped by label, the vote's label last
ORDERS = ("similarity", "vote")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers (a decimal number stays one token).

    Example:
        >>> tokenize("It's GREAT, 10/10! 6.3 cm")
        ['it', 's', 'great', '10', '10', '6.3', 'cm']
    """
    return TOKEN.findall(str(text).lower())


def field_tokens(values: dict[str, Any], fields: list[str]) -> list[str]:
    """The tokens of an example's input fields, each prefixed with its field.

    Example:
        >>> field_tokens({"petal_length": 5.1, "petal_width": 1.8}, ["petal_length", "petal_width"])
        ['petal_length:5.1', 'petal_width:1.8']
    """
    return [f"{field}:{token}" for field in fields for token in tokenize(values.get(field, ""))]


def vote(labels: list[str]) -> str:
    """The most frequent of ``labels``; a tie goes to the tied label nearest the input (``labels`` in the
    order :class:`Retriever` returns demos: the nearest last).

    Example:
        >>> vote(["a", "b", "b", "a"])
        'a'
        >>> vote(["b", "a", "b"])
        'b'
    """
    if not labels:
        raise ValueError("vote needs at least one label")
    counts = Counter(labels)
    top = max(counts.values())
    return next(label for label in reversed(labels) if counts[label] == top)


class BM25:
    """Okapi BM25 (``k1=1.5``, ``b=0.75``, idf ``log(1 + (N - df + 0.5) / (df + 0.5))``) over tokenized texts.

    Example:
        >>> index = BM25([tokenize(t) for t in ["a fine film", "a dull film", "rain today"]])
        >>> [round(float(s), 3) for s in index.scores(["fine", "film"])]
        [1.374, 0.445, 0.0]
    """

    def __init__(self, docs: list[list[str]], k1: float = K1, b: float = B) -> None:
        vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        freqs: list[int] = []
        lengths = np.zeros(len(docs), dtype=np.float64)
        for i, tokens in enumerate(docs):
            lengths[i] = len(tokens)
            for token, n in Counter(tokens).items():
                cols.append(vocab.setdefault(token, len(vocab)))
                rows.append(i)
                freqs.append(n)
        self.vocab = vocab
        self.n = len(docs)
        col = np.asarray(cols, dtype=np.int64)
        row = np.asarray(rows, dtype=np.int64)
        tf = np.asarray(freqs, dtype=np.float64)
        df = np.bincount(col, minlength=len(vocab)).astype(np.float64)
        idf = np.log1p((self.n - df + 0.5) / (df + 0.5))
        avg = float(lengths.mean()) if self.n and lengths.mean() > 0 else 1.0
        weight = idf[col] * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[row] / avg))
        order = np.argsort(col, kind="stable")  # postings: the rows of each token, contiguous
        self._rows = row[order]
        self._weights = weight[order]
        self._starts = np.concatenate([[0], np.cumsum(np.bincount(col, minlength=len(vocab)))])

    def scores(self, query: list[str]) -> np.ndarray:
        """The BM25 score of every text against the ``query`` tokens (each distinct token counted once)."""
        out = np.zeros(self.n, dtype=np.float64)
        for token in dict.fromkeys(query):
            j = self.vocab.get(token)
            if j is not None:
                span = slice(self._starts[j], self._starts[j + 1])
                out[self._rows[span]] += self._weights[span]
        return out


class Retriever:
    """The ``k`` examples of ``pool`` nearest to a call's inputs (BM25 over the tokens of ``input_fields``).

    Args:
        pool: labelled examples (dicts holding at least the input fields).
        input_fields: the fields compared (joined by spaces).
        k: demos per call.
        order: ``"similarity"`` (the nearest last) or ``"vote"`` (grouped by ``label_field``, the label
            most of the ``k`` carry last; see the module docstring).
        label_field: the field ``order="vote"`` groups by.

    Example:
        >>> pool = [{"text": "a fine film", "label": "positive"},
        ...         {"text": "a dull film", "label": "negative"},
        ...         {"text": "rain today", "label": "negative"}]
        >>> [d.label for d in Retriever(pool, ["text"], k=2)({"text": "what a fine film"})]
        ['negative', 'positive']
        >>> pool[2]["text"] = "a dull plot"
        >>> [d.label for d in Retriever(pool, ["text"], k=3)({"text": "what a fine film"})]
        ['negative', 'negative', 'positive']
        >>> by_vote = Retriever(pool, ["text"], k=3, order="vote", label_field="label")
        >>> [d.label for d in by_vote({"text": "what a fine film"})]
        ['positive', 'negative', 'negative']
    """

    method = "bm25"

    def __init__(self, pool: list[dict[str, Any]], input_fields: list[str], k: int, *, order: str = "similarity",
                 label_field: str | None = None) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if order not in ORDERS:
            raise ValueError(f"order must be one of {list(ORDERS)}, got {order!r}")
        if order == "vote" and not label_field:
            raise ValueError("order='vote' needs the label_field to group the demos by")
        self.pool = [dict(example) for example in pool]
        self.input_fields = list(input_fields)
        self.k = k
        self.order = order
        self.label_field = label_field if order == "vote" else None
        self._keys = [self._key(example) for example in self.pool]
        self.index = BM25([field_tokens(example, self.input_fields) for example in self.pool])

    def _key(self, values: dict[str, Any]) -> tuple:
        return tuple(str(values.get(f, "")) for f in self.input_fields)

    def __call__(self, inputs: dict[str, Any]) -> list[dspy.Example]:
        if self.k == 0 or not self.pool:
            return []
        key = self._key(inputs)
        scores = self.index.scores(field_tokens(inputs, self.input_fields))
        order = np.argsort(-scores, kind="stable")  # best first; ties: the earlier pool example
        picked: list[int] = []
        for i in order:
            if self._keys[i] != key:
                picked.append(int(i))
                if len(picked) == self.k:
                    break
        if self.order == "vote":
            picked = self._by_vote(picked)
        return [dspy.Example(**self.pool[i]).with_inputs(*self.input_fields) for i in reversed(picked)]

    def _by_vote(self, picked: list[int]) -> list[int]:
        """``picked`` (nearest first) regrouped, still nearest first: the vote's label first, then the others
        by fewer votes, ties by their nearest demo (so that reversed, the vote's label is next to the input)."""
        labels = [str(self.pool[i].get(self.label_field)) for i in picked]
        counts = Counter(labels)
        groups = sorted(dict.fromkeys(labels), key=lambda label: (-counts[label], labels.index(label)))
        return [i for label in groups for i, own in zip(picked, labels) if own == label]

    def spec(self) -> dict[str, Any]:
        """What a prompt document stores to rebuild this retriever (``order`` and ``label_field`` only
        when the order is not the default: documents of similarity-ordered demos keep their bytes)."""
        out = {"method": self.method, "k": self.k, "input_fields": self.input_fields, "pool": self.pool,
               "k1": K1, "b": B}
        if self.order != "similarity":
            out.update(order=self.order, label_field=self.label_field)
        return out

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Retriever":
        if spec.get("method") != cls.method:
            raise ValueError(f"demo retrieval method {spec.get('method')!r} is not known; this autoprompt "
                             f"retrieves with {cls.method!r}")
        return cls(spec["pool"], spec["input_fields"], int(spec["k"]), order=spec.get("order", "similarity"),
                   label_field=spec.get("label_field"))


def neighbour_votes(pool: list[dict[str, Any]], input_fields: list[str], label_field: str,
                    examples: list[Any], ks: tuple[int, ...]) -> list[dict[int, str | None]]:
    """Per example, for each ``k`` of ``ks``: the :func:`vote` of its ``k`` nearest pool examples' labels
    (``None`` for an empty pool). No LM: what a program given those demos would answer if it copied
    their majority.

    Example:
        >>> pool = [{"text": "a fine film", "label": "positive"},
        ...         {"text": "a dull film", "label": "negative"},
        ...         {"text": "a dull plot", "label": "negative"}]
        >>> neighbour_votes(pool, ["text"], "label", [{"text": "a fine film indeed"}], (1, 3))
        [{1: 'positive', 3: 'negative'}]
    """
    retriever = Retriever(pool, input_fields, max(ks))
    out = []
    for example in examples:
        labels = [str(d[label_field]) for d in retriever({f: example[f] for f in input_fields})]  # nearest last
        out.append({k: vote(labels[-k:]) if labels else None for k in ks})
    return out


def choose_k(dev_scores: dict[int, float]) -> int:
    """The ``k`` of the neighbour vote to keep: the best dev score, ties to the smaller ``k`` (the cheaper
    reference). Used by decide's no-LM reference and by ``benchmarks/retrieval_ceiling.py``.

    Example:
        >>> choose_k({4: 0.80, 8: 0.82, 16: 0.82})
        8
    """
    return max(dev_scores, key=lambda k: (dev_scores[k], -k))


class _Retrieving:
    """Mixed into a predictor's class by :func:`attach`: demos chosen per call unless given."""

    retriever: Retriever

    def forward(self, **kwargs: Any) -> Any:
        if "demos" not in kwargs:
            kwargs["demos"] = self.retriever(kwargs)
        return super().forward(**kwargs)  # type: ignore[misc]

    async def aforward(self, **kwargs: Any) -> Any:
        if "demos" not in kwargs:
            kwargs["demos"] = self.retriever(kwargs)
        return await super().aforward(**kwargs)  # type: ignore[misc]


_CLASSES: dict[type, type] = {}


def attach(predictor: dspy.Predict, retriever: Retriever) -> None:
    """Give ``predictor`` per-call demos from ``retriever`` (its fixed demos are cleared)."""
    base = type(predictor)
    if issubclass(base, _Retrieving):
        base = base.__mro__[2]
    cls = _CLASSES.get(base)
    if cls is None:  # a subclass of the predictor's own class (DSPy's metaclass included)
        cls = _CLASSES[base] = type(base)(f"Retrieving{base.__name__}", (_Retrieving, base), {})
    predictor.__class__ = cls
    predictor.retriever = retriever
    predictor.demos = []


def detach(predictor: dspy.Predict) -> None:
    """Undo :func:`attach`."""
    if isinstance(predictor, _Retrieving):
        predictor.__class__ = type(predictor).__mro__[2]
        del predictor.retriever


def retriever_of(predictor: Any) -> Retriever | None:
    """The retriever attached to ``predictor``, if any."""
    return predictor.retriever if isinstance(predictor, _Retrieving) else None


def demos_for(predictor: Any, inputs: dict[str, Any]) -> list:
    """The demos ``predictor`` sends along with ``inputs``: retrieved, or its fixed ones."""
    retriever = retriever_of(predictor)
    return retriever(inputs) if retriever is not None else list(predictor.demos)

