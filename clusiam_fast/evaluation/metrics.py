"""Metrics, computed with scikit-learn's tested implementations.

- slide classification: accuracy (``accuracy_score``) and one-vs-rest ROC AUC per class
  (``roc_auc_score`` on "class c vs the rest" with the class-c probability) plus their
  macro mean; ROC curves with ``roc_curve``.
- clustering: Rand index (``rand_score``), adjusted Rand index (``adjusted_rand_score``),
  normalised mutual information (``normalized_mutual_info_score``), clusters used.
- patch classification: macro F1 (``f1_score(average="macro")``) and accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..utils.deps import require


def _sk_metrics():
    return require("sklearn.metrics", "scikit-learn", "evaluation metrics")


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class one-vs-rest AUC (NaN when a class is absent or alone) and macro AUC.

    ``probs`` is (n, C) class probabilities; the prediction is their argmax.
    """
    m = _sk_metrics()
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != len(y) or p.shape[1] != len(classes):
        raise ValueError(f"probs must be ({len(y)}, {len(classes)}), got {p.shape}")
    aucs: dict[str, float] = {}
    for c, name in enumerate(classes):
        positive = y == c
        aucs[str(name)] = float(m.roc_auc_score(positive, p[:, c])) if 0 < positive.sum() < len(y) else float("nan")
    defined = [a for a in aucs.values() if not math.isnan(a)]
    return {
        "n": int(len(y)),
        "accuracy": float(m.accuracy_score(y, p.argmax(1))) if len(y) else float("nan"),
        "auc": aucs,
        "auc_macro": float(np.mean(defined)) if defined else float("nan"),
    }


def roc_curves(y_true: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, list[float]]]:
    """One-vs-rest ROC curve per class: {class: {"fpr": [...], "tpr": [...]}} (classes with both outcomes)."""
    m = _sk_metrics()
    y = np.asarray(y_true)
    out = {}
    for c, name in enumerate(classes):
        positive = y == c
        if 0 < positive.sum() < len(y):
            fpr, tpr, _ = m.roc_curve(positive, np.asarray(probs)[:, c])
            out[str(name)] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    return out


def clustering_metrics(labels_true: Sequence, clusters: Sequence[int]) -> dict:
    """Rand index, adjusted Rand index, NMI against labels, and the number of clusters used."""
    m = _sk_metrics()
    t = np.asarray(labels_true)
    c = np.asarray(clusters)
    if len(t) != len(c):
        raise ValueError(f"{len(t)} labels but {len(c)} cluster assignments")
    return {
        "n": int(len(t)),
        "clusters_used": int(len(np.unique(c))),
        "rand_index": float(m.rand_score(t, c)),
        "adjusted_rand_index": float(m.adjusted_rand_score(t, c)),
        "nmi": float(m.normalized_mutual_info_score(t, c)),
    }


def patch_classification_metrics(y_true: Sequence, y_pred: Sequence) -> dict:
    """Macro F1 and accuracy of predicted patch labels."""
    m = _sk_metrics()
    return {
        "n": int(len(y_true)),
        "f1_macro": float(m.f1_score(y_true, y_pred, average="macro")),
        "accuracy": float(m.accuracy_score(y_true, y_pred)),
    }


def mean_std(values: Sequence[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for a single value) ignoring NaNs."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}
