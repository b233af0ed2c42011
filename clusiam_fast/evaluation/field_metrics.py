"""The metrics of the field's benchmarks, with bootstrap intervals, from a task's test predictions.

- **balanced accuracy** (the headline): mean over classes of the recall,
  ``sklearn.metrics.balanced_accuracy_score``; eva's primary metric of its classification tasks
  (kaiko-ai/eva, ``MulticlassBalancedAccuracy``-style "BalancedAccuracy" in its reports) and one of
  Patho-Bench's (mahmoodlab/Patho-Bench, ``bacc``).
- **macro one-vs-rest AUC** (``roc_auc_score(multi_class="ovr", average="macro")``; binary: the AUC of
  the positive class) and **macro one-vs-one AUC** (``multi_class="ovo"``, Hand & Till 2001): Patho-Bench
  reports both (``macro_ovr_auc``, ``macro_ovo_auc``).
- **quadratic-weighted kappa** for ordinal labels (``cohen_kappa_score(weights="quadratic")``, classes in
  their sorted order): Patho-Bench's ``qwk`` for grading tasks (``--ordinal``).
- **bootstrap CIs**: the percentile interval of the mean over seeds of balanced accuracy and of each
  class's one-vs-rest AUC, resampling the test units (slides, patients, or patches) within class, as
  :func:`.bootstrap.bootstrap_auc` does for the macro AUC.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..utils.deps import require
from .bootstrap import replicate_weights, weighted_auc
from .metrics import mean_std


def task_metrics(labels: Sequence[int], probs: np.ndarray, ordinal: bool = False) -> dict:
    """Balanced accuracy, macro OvR and OvO AUC (and QWK when ``ordinal``) of one prediction set."""
    m = require("sklearn.metrics", "scikit-learn", "evaluation metrics")
    y, p = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    pred = p.argmax(1)
    with warnings.catch_warnings():  # a prediction of a class the test set lacks is a miss, as sklearn counts it
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        bacc = float(m.balanced_accuracy_score(y, pred))
    out = {"balanced_accuracy": bacc, "accuracy": float((y == pred).mean())}
    present = np.unique(y)
    if len(present) < 2:
        out["auc_ovr_macro"] = out["auc_ovo_macro"] = float("nan")
    elif p.shape[1] == 2:
        out["auc_ovr_macro"] = out["auc_ovo_macro"] = float(m.roc_auc_score(y, p[:, 1]))
    else:
        q = p[:, present] / np.maximum(p[:, present].sum(1, keepdims=True), 1e-12)  # classes of the test set
        codes = np.searchsorted(present, y)
        out["auc_ovr_macro"] = float(m.roc_auc_score(codes, q, multi_class="ovr", average="macro"))
        out["auc_ovo_macro"] = float(m.roc_auc_score(codes, q, multi_class="ovo", average="macro"))
    if ordinal:
        out["qwk"] = float(m.cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(p.shape[1]))))
    return out


def weighted_balanced_accuracy(labels: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy (R,) under each row of ``weights`` (R, n): the mean recall of the classes present."""
    recalls = []
    for c in np.unique(labels):
        in_class = weights * (labels == c)
        recalls.append((in_class * (pred == c)).sum(1) / in_class.sum(1))
    return np.mean(recalls, axis=0)


def summarise_task(
    labels: Sequence[int],
    runs: Sequence[np.ndarray],
    classes: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    ordinal: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "slide",
) -> dict:
    """Mean ± std over seeds of :func:`task_metrics`, and the bootstrap CI of the mean balanced accuracy and
    of each class's AUC (all ``runs`` scored on the same test units, ``labels``)."""
    y = np.asarray(labels, dtype=np.int64)
    runs = [np.asarray(r, dtype=np.float64) for r in runs]
    per_run = [task_metrics(y, r, ordinal) for r in runs]
    out: dict = {key: mean_std([m[key] for m in per_run]) for key in per_run[0]}
    out["seeds"] = len(runs)
    if not n_boot or len(np.unique(y)) < 2:
        return out
    weights = replicate_weights(y, None if groups is None else np.asarray(groups, dtype=str), n_boot, seed)
    tail = 100 * (1 - level) / 2
    bacc = np.mean([weighted_balanced_accuracy(y, r.argmax(1), weights) for r in runs], axis=0)
    out["balanced_accuracy_ci"] = [float(v) for v in np.percentile(bacc, [tail, 100 - tail])]
    out["auc_ci_per_class"] = {}
    for c, name in enumerate(classes):
        if 0 < (y == c).sum() < len(y):
            reps = np.mean([weighted_auc(r[:, c], y == c, weights) for r in runs], axis=0)
            point = float(np.mean([weighted_auc(r[:, c], y == c, np.ones((1, len(y))))[0] for r in runs]))
            out["auc_ci_per_class"][str(name)] = [point, *(float(v) for v in np.percentile(reps, [tail, 100 - tail]))]
    out["bootstrap"] = {
        "n_boot": int(n_boot),
        "seed": seed,
        "level": level,
        "unit": unit if groups is None else "patient",
    }
    return out


def add_field_metrics(mil: dict, *, ordinal: bool, n_boot: int, seed: int = 0) -> None:
    """``mil["models"][name]["field"]``: :func:`summarise_task` of each MIL model's test runs (pooled folds)."""
    for res in mil["models"].values():
        tests = [r["test"] for r in res["runs"]]
        res["field"] = summarise_task(
            tests[0]["labels"],
            [np.asarray(t["probs"]) for t in tests],
            mil["classes"],
            groups=tests[0].get("patient_ids"),
            ordinal=ordinal,
            n_boot=n_boot,
            seed=seed,
        )
