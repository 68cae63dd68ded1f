"""Confidence intervals and paired tests for scores of several programs on the same examples.

NumPy (a core dependency) does the resampling; the exact McNemar test is a binomial tail computed
with :func:`math.comb`, so SciPy is not needed.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["bootstrap_ci", "paired_test"]


def bootstrap_ci(scores: Sequence[float], *, level: float = 0.95, n_boot: int = 4000,
                 seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``scores``.

    Example:
        >>> lo, hi = bootstrap_ci([1] * 80 + [0] * 20)
        >>> 0.7 < lo < 0.8 < hi < 0.9
        True
    """
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_test(a: Sequence[float], b: Sequence[float], *, n_perm: int = 10000, seed: int = 0) -> dict[str, float | str]:
    """Is the mean of ``a`` different from the mean of ``b``, scored on the same examples?

    0/1 scores: the exact two-sided McNemar test (a binomial test on the examples where exactly one
    is right). Other scores: a paired sign-flip permutation test on the differences.

    Returns:
        ``{"test", "p_value", "difference", "a_only", "b_only"}`` (``a_only``/``b_only``: examples where
        only that side scored higher).

    Example:
        >>> paired_test([1] * 30 + [0] * 10, [1] * 20 + [0] * 20)["p_value"] < 0.01
        True
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_test needs two score lists of the same non-zero length, got {x.size} and {y.size}")
    diff = x - y
    a_only, b_only = int((diff > 0).sum()), int((diff < 0).sum())
    if set(np.unique(np.concatenate([x, y]))) <= {0.0, 1.0}:
        n, k = a_only + b_only, min(a_only, b_only)
        p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
        test = "exact McNemar"
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((-1.0, 1.0), size=(n_perm, diff.size))
        observed = abs(diff.mean())
        p = float((np.abs((signs * diff).mean(axis=1)) >= observed - 1e-12).mean())
        test = "paired sign-flip permutation"
    return {"test": test, "p_value": float(p), "difference": float(diff.mean()), "a_only": a_only, "b_only": b_only}
