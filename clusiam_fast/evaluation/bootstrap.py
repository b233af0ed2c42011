"""Bootstrap confidence intervals of test AUC (percentile method, stratified, seeded).

Each replicate resamples the test slides with replacement *within each class* (so every
replicate has both outcomes and the AUC is always defined); with ``groups`` (patient
ids, one class per patient) whole patients are resampled instead, all their slides
together, because slides of one patient are not independent. The CI is the 2.5 and
97.5 percentiles of the replicate AUCs (``n_boot`` = 1000 by default).

Several prediction sets of the same slides (seeds) share the replicates: the interval
of their *mean* AUC resamples the slides once per replicate and averages the seeds'
AUCs on it. The AUC is one-vs-rest per class, macro-averaged (for two classes: the AUC
of the positive class), computed for all replicates at once from weighted ranks; it
equals ``sklearn.metrics.roc_auc_score`` on the resampled slides (ties count 1/2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _replicate_weights(
    labels: np.ndarray, groups: np.ndarray | None, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, n) how often each slide is drawn: units (slides or patients) resampled within class."""
    units = np.arange(len(labels)) if groups is None else np.unique(groups, return_inverse=True)[1]
    n_units = int(units.max()) + 1
    unit_class = np.zeros(n_units, dtype=np.int64)
    unit_class[units] = labels
    counts = np.zeros(n_boot * n_units)
    rows = np.arange(n_boot)[:, None] * n_units
    for c in np.unique(unit_class):
        members = np.flatnonzero(unit_class == c)
        draws = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
        counts += np.bincount((rows + draws).ravel(), minlength=n_boot * n_units)
    counts = counts.reshape(n_boot, n_units)
    return counts[:, units]


def replicate_weights(labels: np.ndarray, groups: np.ndarray | None, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) draws of each test unit, resampled within class (by patient with ``groups``), seeded."""
    return _replicate_weights(np.asarray(labels, dtype=np.int64), groups, int(n_boot), np.random.default_rng(seed))


def weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC of ``scores`` (n,) for ``positive`` (n,) bool under each row of ``weights`` (R, n)."""
    levels, inverse = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), len(levels)))
    onehot[np.arange(len(scores)), inverse] = 1.0
    pos = (weights * positive) @ onehot  # (R, L) positive weight per score level
    neg = (weights * ~positive) @ onehot
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each level
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    return wins / (pos.sum(axis=1) * neg.sum(axis=1))


def macro_auc(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUC (R,) of (n, C) ``probs`` over the classes present, per weight row."""
    present = [c for c in range(probs.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    return np.mean([weighted_auc(probs[:, c], labels == c, weights) for c in present], axis=0)


def bootstrap_auc(
    labels: Sequence[int],
    probs: np.ndarray | Sequence[np.ndarray],
    *,
    groups: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Point estimate and percentile CI of the test (macro) AUC, or of the mean AUC of several runs.

    ``probs`` is one (n, C) array or a list of them (seeds scored on the same n slides).
    Returns ``{"auc", "low", "high", "level", "n_boot", "unit", "n_units"}`` where ``unit``
    is ``"slide"`` or ``"patient"``; NaNs when the slides hold a single class.
    """
    y = np.asarray(labels, dtype=np.int64)
    runs = [np.asarray(probs, dtype=np.float64)] if np.ndim(probs) == 2 else [np.asarray(p, np.float64) for p in probs]
    g = None if groups is None else np.asarray([str(v) for v in groups])
    unit = "slide" if g is None else "patient"
    n_units = len(y) if g is None else len(np.unique(g))
    out = {"level": level, "n_boot": int(n_boot), "unit": unit, "n_units": int(n_units)}
    if len(np.unique(y)) < 2:
        return {"auc": float("nan"), "low": float("nan"), "high": float("nan"), **out}
    ones = np.ones((1, len(y)))
    point = float(np.mean([macro_auc(y, p, ones)[0] for p in runs]))
    weights = _replicate_weights(y, g, int(n_boot), np.random.default_rng(seed))
    reps = np.mean([macro_auc(y, p, weights) for p in runs], axis=0)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return {"auc": point, "low": float(low), "high": float(high), **out}


def format_ci(ci: dict | None, digits: int = 3) -> str:
    """``0.912 [0.851, 0.963]``, or ``n/a``."""
    if not ci or ci.get("auc") is None or (isinstance(ci["auc"], float) and np.isnan(ci["auc"])):
        return "n/a"
    return f"{ci['auc']:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"
