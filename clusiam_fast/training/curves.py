"""``OUT/training.png``: loss curves, active clusters, collapse monitor and lr, redrawn each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_path
from ..utils.deps import require

Rows = list[dict[str, Any]]


def _series(rows: Rows, key: str, x: str = "step") -> tuple[list, list]:
    """The (x, key) pairs of the rows that hold a value for ``key``."""
    pts = [(r[x], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _plot_losses(ax, epochs: Rows, steps: Rows) -> None:
    for key, colour in (("loss", "k"), ("inv_loss", "tab:blue"), ("cluster_loss", "tab:orange")):
        xs, ys = _series(steps, key)
        if xs:
            ax.plot(xs, ys, color=colour, alpha=0.35, lw=1)
        ex, ey = _series(epochs, key)
        if ex:
            ax.plot(ex, ey, "o-", color=colour, label=f"{key} (epoch mean)")
    ax.set(title="losses (thin: recent steps; dots: epoch means)", xlabel="step")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _plot_clusters(ax, epochs: Rows, num_clusters: int | None) -> None:
    for key, style in (("active_clusters", "o-"), ("active_clusters_gumbel", "s--")):
        xs, ys = _series(epochs, key, "epoch")
        if xs:
            ax.plot(xs, ys, style, label=key)
    ax.set(title=f"active clusters (of K = {num_clusters})" if num_clusters else "active clusters", xlabel="epoch")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if num_clusters:
        ax.set_ylim(0, num_clusters * 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no cluster head", ha="center", va="center", transform=ax.transAxes)


def _plot_collapse(ax, epochs: Rows, collapse_warn: float | None) -> None:
    xs, ys = _series(epochs, "collapse_std", "epoch")
    ax.plot(xs, ys, "o-", color="tab:green")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    if collapse_warn is not None:
        ax.axhline(collapse_warn, color="tab:red", lw=0.8, ls="--", label="warning level")
        ax.legend(fontsize=8)
    ax.set(
        title="collapse monitor: std(normalised z) * sqrt(dim)  (1 healthy, 0 collapsed)",
        xlabel="epoch",
        ylim=(0, max([1.1, *ys]) if ys else 1.1),
    )
    ax.title.set_fontsize(9)


def _plot_lr(ax, steps: Rows) -> None:
    xs, ys = _series(steps, "lr")
    ax.plot(xs, ys, color="tab:purple")
    ax.set(title="learning rate", xlabel="step")


def plot_training(
    epochs: Rows,
    steps: Rows,
    path: Path,
    *,
    title: str = "",
    collapse_warn: float | None = None,
    num_clusters: int | None = None,
) -> Path:
    """Draw the four panels from the logged rows and write the PNG atomically."""
    require("matplotlib", "matplotlib", "the training plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 7.5))
    (a_loss, a_clu), (a_col, a_lr) = ax
    _plot_losses(a_loss, epochs, steps)
    _plot_clusters(a_clu, epochs, num_clusters)
    _plot_collapse(a_col, epochs, collapse_warn)
    _plot_lr(a_lr, steps)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
