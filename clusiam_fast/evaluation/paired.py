"""Paired comparison of two methods on the same test units: a paired bootstrap of the metric difference.

Each replicate resamples the test units once (within class; whole patients with ``groups``) and
scores both methods on that same resample, so the interval of the difference accounts for the
correlation between them (two methods right and wrong on the same hard slides), which the overlap
of two separate intervals does not: it is the paired bootstrap of Patho-Bench's and eva's
model comparisons (Efron & Tibshirani 1993, ch. 16). Several seeds of a method are averaged on
each replicate, as :func:`.bootstrap.bootstrap_auc` does. Returns the difference A - B, its
percentile CI and a two-sided bootstrap p-value (twice the share of replicates on the far side of 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bootstrap import macro_auc, replicate_weights
from .field_metrics import weighted_balanced_accuracy

METRICS = ("auc", "balanced_accuracy")


def _score(metric: str, y: np.ndarray, runs: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    if metric == "auc":
        return np.mean([macro_auc(y, r, weights) for r in runs], axis=0)
    return np.mean([weighted_balanced_accuracy(y, r.argmax(1), weights) for r in runs], axis=0)


def paired_bootstrap(
    labels: Sequence[int],
    runs_a: Sequence[np.ndarray],
    runs_b: Sequence[np.ndarray],
    *,
    metric: str = "auc",
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Difference of ``metric`` (macro AUC or balanced accuracy, mean over seeds) of A minus B, with its CI."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    y = np.asarray(labels, dtype=np.int64)
    a = [np.asarray(r, dtype=np.float64) for r in runs_a]
    b = [np.asarray(r, dtype=np.float64) for r in runs_b]
    if any(r.shape[0] != len(y) for r in a + b):
        raise ValueError("both methods must be scored on the same test units")
    ones = np.ones((1, len(y)))
    point = float(_score(metric, y, a, ones)[0] - _score(metric, y, b, ones)[0])
    g = None if groups is None else np.asarray([str(v) for v in groups])
    weights = replicate_weights(y, g, n_boot, seed)
    reps = _score(metric, y, a, weights) - _score(metric, y, b, weights)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    p = min(1.0, 2 * min(float((reps <= 0).mean()), float((reps >= 0).mean())))
    return {
        "metric": metric,
        "difference": point,
        "low": float(low),
        "high": float(high),
        "p_value": p,
        "level": level,
        "n_boot": int(n_boot),
        "n_units": int(len(y) if g is None else len(np.unique(g))),
        "unit": "slide" if g is None else "patient",
    }
