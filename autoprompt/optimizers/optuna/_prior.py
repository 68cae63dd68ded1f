"""Trials that add the neighbours' label prior (:mod:`autoprompt._vote_prior`) to a label choice.

The prior's bias ``c`` decides whether it helps: on SST-2 a shift of 0.5 costs up to 15 points and a bias set
without labels (batch calibration) stays at the neighbours' vote (``benchmarks/results/vote_prior.md``), too
narrow for the sampler to find in the few trials a small budget buys. So a trial that takes the prior does not
sample ``c`` and ``w``: it reads the label probabilities of the same dev rows as every other trial (one metered
call each, as a greedy answer costs), fits ``w`` and the bias on them (the best mean score; ties to the smaller
``w``, the middle of equally good biases) and reports a **cross-fitted** score: the rows dealt into
:data:`PRIOR_FOLDS` folds, each scored with the values fitted on the others, so that it stays comparable, row
for row, with the other trials' held-out greedy scores. The program it stands for takes the values fitted on
all its rows. Only for a one-predictor program whose only output is the task's label, labels with distinct
first tokens and the embedded engine (what the pool checks).
"""

from __future__ import annotations

import math
from typing import Any

import dspy
import numpy as np

from autoprompt._vote_prior import LabelPrior

__all__ = ["PRIOR_FOLDS", "PRIOR_K", "PRIOR_WEIGHTS", "PRIOR_BIASES", "REFIT_MIN_TRIALS", "cross_fitted", "fit_prior",
           "prior_for", "prior_rows", "refit_reserve"]

#: neighbours counted: the best k on SST-2 dev for every prompt measured (``vote_prior.md``)
PRIOR_K = 64
#: the prior's weights a trial fits among (0: the fitted bias alone, a calibration)
PRIOR_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
#: the biases a trial fits among, per label but the first (the reference)
PRIOR_BIASES = tuple(round(float(c), 2) for c in np.arange(-4.0, 4.001, 0.25))
#: folds of the cross-fitted score: each row is scored by values fitted on 90% of the others (two halves, as
#: before, fitted on 50 of 100 rows and under-rated the rule the program takes)
PRIOR_FOLDS = 10
#: whole trials a call cap must still buy beside the refit's rows for the search to hold them back
REFIT_MIN_TRIALS = 4


def prior_for(cands: dict, task: Any, input_fields: list[str], *, weight: float = 1.0,
              bias: dict[str, float] | None = None) -> LabelPrior:
    """The :class:`LabelPrior` of a predictor's pool entry (its ``label_prior`` and its labelled pool)."""
    spec = cands["label_prior"]
    pool = cands.get("retrieval") or cands["prior_pool"]
    return LabelPrior(pool, input_fields, task.label_field, spec["choices"], spec["token_ids"], k=PRIOR_K,
                      weight=weight, bias=bias)


def prior_rows(predictor: dspy.Predict, prior: LabelPrior, task: Any, example: Any
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """One dev row: the model's log probability of each label (uniform when its answer never reaches the
    label), the log share of each label among the neighbours, the task's score of answering each label, and
    whether the distribution was missing."""
    from autoprompt._calibration import label_distribution

    inputs = {f: example[f] for f in predictor.signature.input_fields}
    dist = label_distribution(predictor, inputs, field=task.label_field, token_ids=prior.token_ids)
    n = len(prior.choices)
    logp = np.log(np.maximum(np.asarray(dist, dtype=float), 1e-12)) if dist is not None else np.full(n, -math.log(n))
    shares = np.asarray(prior.log_shares(inputs))
    scores = np.asarray([float(task.score(example, dspy.Prediction(**{task.label_field: c})))
                         for c in prior.choices])
    return logp, shares, scores, dist is None


def _mean_score(logp: np.ndarray, shares: np.ndarray, scores: np.ndarray, w: float, bias: np.ndarray) -> float:
    picked = np.argmax(logp + w * shares + bias, axis=1)
    return float(np.mean(scores[np.arange(len(scores)), picked]))


def fit_prior(logp: np.ndarray, shares: np.ndarray, scores: np.ndarray, *, passes: int = 2
              ) -> tuple[float, np.ndarray, float]:
    """``(w, bias, mean score)``: the weight of :data:`PRIOR_WEIGHTS` and the biases (the first label's 0, the
    others from :data:`PRIOR_BIASES`, by coordinate ascent) whose answers ``argmax(logp + w * shares + bias)``
    score best on these rows (arrays: rows x labels); ties to the smaller ``w``; among equally good biases the
    middle one (the answers then change as far from it on either side).

    Example:
        >>> logp = np.log([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
        >>> shares = np.zeros((4, 2))
        >>> scores = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])  # the model favours the first label too much
        >>> w, bias, score = fit_prior(logp, shares, scores)
        >>> w, bias.tolist(), score
        (0.0, [0.0, 1.25], 1.0)
    """
    n_labels = logp.shape[1]
    best = (-1.0, 0.0, np.zeros(n_labels))
    for w in PRIOR_WEIGHTS:
        bias = np.zeros(n_labels)
        for _ in range(passes if n_labels > 2 else 1):
            for label in range(1, n_labels):
                values = []
                for c in PRIOR_BIASES:
                    trial = bias.copy()
                    trial[label] = c
                    values.append(_mean_score(logp, shares, scores, w, trial))
                top = max(values)
                tied = [c for c, v in zip(PRIOR_BIASES, values) if v == top]
                bias[label] = tied[len(tied) // 2]  # the middle of the best: the widest margin on both sides
        score = _mean_score(logp, shares, scores, w, bias)
        if score > best[0]:
            best = (score, w, bias)
    return best[1], best[2], best[0]


def cross_fitted(logp: np.ndarray, shares: np.ndarray, scores: np.ndarray, *, folds: int = PRIOR_FOLDS
                 ) -> np.ndarray:
    """Each row's score under the values :func:`fit_prior` fits on the other folds (row ``i`` in fold
    ``i % folds``): an estimate of the fitted rule's score on rows it was not fitted on. A lone row (nothing
    to fit on) scores with no prior and no bias.

    Example:
        >>> logp = np.log([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
        >>> scores = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
        >>> cross_fitted(logp, np.zeros((4, 2)), scores, folds=2).tolist()  # row 1 gets the bias fitted on 0 and 2
        [1.0, 0.0, 1.0, 1.0]
    """
    out = np.zeros(len(scores))
    rows = np.arange(len(scores))
    for fold in range(min(folds, len(scores))):
        own, other = rows[rows % folds == fold], rows[rows % folds != fold]
        if len(other):
            w, bias, _ = fit_prior(logp[other], shares[other], scores[other])
        else:
            w, bias = 0.0, np.zeros(logp.shape[1])
        picked = np.argmax(logp[own] + w * shares[own] + bias, axis=1)
        out[own] = scores[own, picked]
    return out


def refit_reserve(max_calls: int | None, spent: int, rows: int, trial_rows: int) -> int:
    """LM calls the trials leave for the refit of a winning prior trial on ``rows`` more dev rows (one call
    each), under a cap of ``max_calls`` with ``spent`` already spent: ``rows`` when the cap still buys
    :data:`REFIT_MIN_TRIALS` whole trials of ``trial_rows`` calls beside them, else 0 (a small budget goes to
    trials: at 300 calls on SST-2 the search completes two or three). No cap: 0 (nothing to hold back; the
    refit runs after the trials all the same).

    Example:
        >>> refit_reserve(600, 50, 100, 100), refit_reserve(300, 50, 100, 100), refit_reserve(None, 0, 100, 100)
        (100, 0, 0)
    """
    if max_calls is None or rows <= 0:
        return 0
    return rows if max_calls - spent - rows >= REFIT_MIN_TRIALS * trial_rows else 0
