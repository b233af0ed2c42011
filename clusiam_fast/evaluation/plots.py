"""PNG figures for the report (matplotlib, Agg backend): cluster sizes and ROC curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path
from ..utils.deps import require


def _pyplot():
    require("matplotlib", "matplotlib", "report figures")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _pyplot().close(fig)
    return Path(path)


def plot_cluster_sizes(sizes: dict[int, int], path: str | Path, title: str = "Cluster sizes") -> Path:
    """Bar chart of patches per cluster, largest first (empty clusters left out)."""
    plt = _pyplot()
    ids = sorted(sizes, key=lambda k: -sizes[k])
    counts = np.array([sizes[k] for k in ids])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(ids) + 2), 3.5))
    ax.bar(np.arange(len(ids)), counts, color="steelblue")
    if len(ids) <= 40:
        ax.set_xticks(np.arange(len(ids)), [str(i) for i in ids], fontsize=7, rotation=90)
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("patches")
    ax.set_title(f"{title}: {len(ids)} clusters used, {int(counts.sum())} patches")
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(model: str, runs: list[dict], classes: list[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class (binary: the positive class only), one line per seed."""
    from .metrics import roc_curves

    plt = _pyplot()
    shown = classes[1:] if len(classes) == 2 else classes
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), shown):
        for run in runs:
            test = run["test"]
            curves = roc_curves(test["labels"], np.asarray(test["probs"]), classes)
            if name in curves:
                auc = test["metrics"]["auc"][name]
                ax.plot(curves[name]["fpr"], curves[name]["tpr"], lw=1.3, label=f"seed {run['seed']} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{model}: {name} vs rest", fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=7, loc="lower right")
    for ax in axes.ravel()[len(shown) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
