"""Linear probe: logistic regression on frozen features, its regularisation chosen on validation only.

As Patho-Bench's linear probe (mahmoodlab/Patho-Bench, ``LinearProbe``: scikit-learn
``LogisticRegression`` with lbfgs on frozen patch or slide features, the inverse regularisation
``C`` swept) and eva's linear head: for each seed, a stratified ``val_fraction`` of the training
units is held out, features are standardised on the rest (``StandardScaler``), every ``C`` of the
sweep is fitted and scored on the validation units by balanced accuracy (then macro AUC), and the
chosen ``C`` is refitted on all training units; the test units are scored once per seed
(:func:`.field_metrics.summarise_task`). Slide tasks use the mean of each slide's patch features
(Patho-Bench's mean-pooling baseline) on the MIL protocol's own train/test splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..utils.deps import require
from .field_metrics import summarise_task, task_metrics

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MAX_STORED = 20_000  # test units whose predictions report.json keeps (for paired comparisons)


def _fit(x: np.ndarray, y: np.ndarray, c: float, n_classes: int):
    """(scaler, model) of one C; the model's probabilities cover every class (zeros for absent ones)."""
    lm = require("sklearn.linear_model", "scikit-learn", "the linear probe")
    pre = require("sklearn.preprocessing", "scikit-learn", "the linear probe")
    scaler = pre.StandardScaler().fit(x)
    model = lm.LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(x), y)
    return scaler, model


def _probs(fitted, x: np.ndarray, n_classes: int) -> np.ndarray:
    scaler, model = fitted
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(scaler.transform(x))
    return out


def _choose_c(x: np.ndarray, y: np.ndarray, cs: Sequence[float], n_classes: int, val_fraction: float, seed: int):
    """The C of the best validation (balanced accuracy, macro AUC), and the sweep."""
    ms = require("sklearn.model_selection", "scikit-learn", "the linear probe")
    tr, va = ms.train_test_split(np.arange(len(y)), test_size=val_fraction, stratify=y, random_state=seed)
    sweep = []
    for c in cs:
        m = task_metrics(y[va], _probs(_fit(x[tr], y[tr], c, n_classes), x[va], n_classes))
        auc = m["auc_ovr_macro"] if not np.isnan(m["auc_ovr_macro"]) else 0.0
        sweep.append({"C": float(c), "val_balanced_accuracy": m["balanced_accuracy"], "val_auc": auc})
    best = max(sweep, key=lambda s: (s["val_balanced_accuracy"], s["val_auc"], -s["C"]))
    return best["C"], sweep


def linear_probe(
    train_x: np.ndarray,
    train_y: Sequence[int],
    test_x: np.ndarray,
    test_y: Sequence[int],
    classes: Sequence[str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.25,
    test_ids: Sequence[str] | None = None,
    test_groups: Sequence[str] | None = None,
    ordinal: bool = False,
    n_boot: int = 1000,
    unit: str = "slide",
) -> dict:
    """Fit, select and test the probe once per seed (see the module docstring); summary and runs."""
    x, y = np.asarray(train_x, dtype=np.float64), np.asarray(train_y, dtype=np.int64)
    tx, ty = np.asarray(test_x, dtype=np.float64), np.asarray(test_y, dtype=np.int64)
    counts = np.bincount(y, minlength=len(classes))
    if (counts[counts > 0] < 2).any() or len(counts[counts > 0]) < 2:
        raise ValueError(f"the linear probe needs two classes with 2+ training units each, got {counts.tolist()}")
    runs, probs = [], []
    for seed in seeds:
        c, sweep = _choose_c(x, y, cs, len(classes), val_fraction, seed)
        p = _probs(_fit(x, y, c, len(classes)), tx, len(classes))
        probs.append(p)
        run = {"seed": int(seed), "C": c, "sweep": sweep, "test": task_metrics(ty, p, ordinal)}
        if len(ty) <= MAX_STORED:
            run["test"].update(labels=ty.tolist(), probs=p.round(6).tolist())
        runs.append(run)
    summary = summarise_task(ty, probs, classes, groups=test_groups, ordinal=ordinal, n_boot=n_boot, unit=unit)
    out = {"summary": summary, "runs": runs, "n_train": int(len(y)), "n_test": int(len(ty)), "classes": list(classes)}
    if test_ids is not None and len(ty) <= MAX_STORED:
        out["test_ids"] = [str(i) for i in test_ids]
    return out


def slide_probe(
    features: Sequence[np.ndarray],
    labels: Sequence[int],
    slide_ids: Sequence[str],
    classes: Sequence[str],
    splits: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    groups: Sequence[str] | None = None,
    **options,
) -> dict:
    """The probe on mean-pooled slide features; several (fold) splits are pooled into one test set."""
    pooled = np.stack([np.asarray(f, dtype=np.float64).mean(0) for f in features])
    y = np.asarray(labels, dtype=np.int64)
    if len(splits) == 1:
        ((train, test),) = splits
    else:  # cross-validation: each fold's test slides scored by a probe fitted on the other folds
        return _pooled_folds(pooled, y, slide_ids, classes, splits, groups, options)
    return linear_probe(
        pooled[train],
        y[train],
        pooled[test],
        y[test],
        classes,
        test_ids=[slide_ids[i] for i in test],
        test_groups=None if groups is None else [groups[i] for i in test],
        **options,
    )


def _pooled_folds(pooled, y, slide_ids, classes, splits, groups, options) -> dict:
    order = np.concatenate([test for _, test in splits])
    probs: list[list[np.ndarray]] = []
    folds = []
    for train, test in splits:
        res = linear_probe(pooled[train], y[train], pooled[test], y[test], classes, **{**options, "n_boot": 0})
        folds.append({"C": [r["C"] for r in res["runs"]], "n_test": res["n_test"]})
        probs.append([np.asarray(r["test"]["probs"]) for r in res["runs"]])
    runs = [np.concatenate([fold[s] for fold in probs]) for s in range(len(probs[0]))]
    seeds = options.get("seeds", (0, 1, 2, 3, 4))
    summary = summarise_task(
        y[order],
        runs,
        classes,
        groups=None if groups is None else [groups[i] for i in order],
        ordinal=options.get("ordinal", False),
        n_boot=options.get("n_boot", 1000),
    )
    return {
        "summary": summary,
        "folds": folds,
        "runs": [
            {"seed": int(s), "test": {"labels": y[order].tolist(), "probs": r.round(6).tolist()}}
            for s, r in zip(seeds, runs)
        ],
        "test_ids": [slide_ids[i] for i in order],
        "n_test": int(len(order)),
        "classes": list(classes),
    }
