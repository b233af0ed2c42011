"""The MIL protocol over k folds: every slide is a test slide once, never seen by its selection.

For each fold (from :func:`~.splits.kfold_splits`), :func:`~.protocol.run_protocol` gets
that fold's training slides and its test slides sealed in a
:class:`~.protocol.HeldOutTestSet`: model selection (the validation split included) only
ever sees the training part, exactly as in the single-split protocol. Results:

- ``folds[k]``: the fold's slides and the protocol's full per-model results (per seed:
  grid, selection, test metrics and bootstrap CI).
- ``models[name]["summary"]``: pooled out-of-fold predictions -- per seed, the test
  predictions of all folds concatenated (each slide once) and scored together; mean ±
  std over seeds, and the bootstrap CI of the seeds' mean macro AUC over all slides.
- ``models[name]["fold_summary"]``: mean ± std over folds of each fold's seed-mean
  accuracy and macro AUC (the spread that one test split hides).
- ``models[name]["runs"]``: the pooled predictions per seed (for ROC curves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ..metrics import classification_metrics, mean_std
from .data import BagDataset
from .protocol import AttentionSink, HeldOutTestSet, MILConfig, auc_ci, run_protocol, summarise
from .registry import DEFAULT_MODELS


def _pool(fold_runs: list[dict], classes: list[str], cfg: MILConfig) -> dict:
    """One seed's test predictions of every fold, concatenated and scored together."""
    tests = [r["test"] for r in fold_runs]
    groups = [t["patient_ids"] for t in tests]
    pooled = {
        "slide_ids": [s for t in tests for s in t["slide_ids"]],
        "patient_ids": None if any(g is None for g in groups) else [p for g in groups for p in g],
        "labels": [y for t in tests for y in t["labels"]],
        "probs": [p for t in tests for p in t["probs"]],
    }
    pooled["metrics"] = classification_metrics(pooled["labels"], np.asarray(pooled["probs"]), classes)
    pooled["auc_ci"] = auc_ci([pooled], cfg)
    return pooled


def run_cross_validation(
    bags: BagDataset,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    cfg: MILConfig,
    models: Sequence[str] = DEFAULT_MODELS,
    attention_sink: AttentionSink | None = None,
) -> dict:
    """Run the protocol on every (train, test) fold of ``bags``; pool and summarise (module docstring)."""
    tested_once: set[int] = set()
    for k, (train, test) in enumerate(folds):
        if set(map(int, train)) & set(map(int, test)):
            raise ValueError(f"fold {k}: training and test slides overlap")
        if tested_once & set(map(int, test)):
            raise ValueError(f"fold {k}: a slide is a test slide in two folds")
        tested_once |= set(map(int, test))
    classes = list(bags.classes)
    results: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "classes": classes,
        "folds": [],
        "models": {},
    }
    for k, (train_idx, test_idx) in enumerate(folds):
        train, test = bags.subset(train_idx), bags.subset(test_idx)
        res = run_protocol(train, HeldOutTestSet(test), cfg, models, attention_sink)
        results["folds"].append(
            {
                "fold": k,
                "train_slides": len(train),
                "test_slides": len(test),
                "class_counts_test": {c: int((test.labels == i).sum()) for i, c in enumerate(classes)},
                "test_slide_ids": list(test.slide_ids),
                "models": res["models"],
            }
        )
    for name in models:
        per_fold = [f["models"][name] for f in results["folds"]]
        runs = [
            {"seed": seed, "test": _pool([fold["runs"][i] for fold in per_fold], classes, cfg)}
            for i, seed in enumerate(cfg.seeds)
        ]
        results["models"][name] = {
            "summary": summarise([r["test"] for r in runs], classes, cfg),
            "fold_summary": {
                "accuracy": mean_std([f["summary"]["accuracy"]["mean"] for f in per_fold]),
                "auc_macro": mean_std([f["summary"]["auc_macro"]["mean"] for f in per_fold]),
            },
            "runs": runs,
        }
    return results
