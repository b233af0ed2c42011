"""``OUT/training.png``: losses, active clusters, lr and the collapse monitors, redrawn each epoch.

Top row: loss curves, active clusters, lr. Bottom row, the collapse monitors of
:mod:`.monitors`: the two std monitors (backbone, and the BatchNorm-ended
projection labelled as such), the backbone's RankMe, the assigner's usage entropy.
A partial epoch's row (a run stopped mid-epoch) is drawn with a hollow marker.
"""

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


def _plot_epochs(ax, epochs: Rows, key: str, style: str, **kw) -> list:
    """Whole epochs joined by a line; a partial epoch's point hollow. Returns the values drawn."""
    whole = [r for r in epochs if not r.get("partial")]
    xs, ys = _series(whole, key, "epoch")
    line = ax.plot(xs, ys, style, **kw)[0] if xs else None
    px, py = _series([r for r in epochs if r.get("partial")], key, "epoch")
    if px:
        colour = line.get_color() if line is not None else kw.get("color")
        label = f"{kw['label']} (partial epoch)" if line is None and "label" in kw else None
        ax.plot(px, py, style[0], mfc="none", color=colour, label=label)
    return ys + py


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _plot_losses(ax, epochs: Rows, steps: Rows) -> None:
    for key, colour in (("loss", "k"), ("inv_loss", "tab:blue"), ("cluster_loss", "tab:orange")):
        xs, ys = _series(steps, key)
        if xs:
            ax.plot(xs, ys, color=colour, alpha=0.35, lw=1)
        ex, ey = _series([r for r in epochs if not r.get("partial")], key)
        if ex:
            ax.plot(ex, ey, "o-", color=colour, label=f"{key} (epoch mean)")
    ax.set(title="losses (thin: recent steps; dots: epoch means)", xlabel="step")
    _legend(ax)


def _plot_clusters(ax, epochs: Rows, num_clusters: int | None) -> None:
    for key, style, colour in (("active_clusters", "o-", "tab:blue"), ("active_clusters_gumbel", "s--", "tab:red")):
        _plot_epochs(ax, epochs, key, style, label=key, color=colour)
    ax.set(title=f"active clusters (of K = {num_clusters})" if num_clusters else "active clusters", xlabel="epoch")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if num_clusters:
        ax.set_ylim(0, num_clusters * 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no cluster head", ha="center", va="center", transform=ax.transAxes)


def _plot_std(ax, epochs: Rows, collapse_warn: float | None, min_std: float | None) -> None:
    ys = _plot_epochs(ax, epochs, "backbone_std", "o-", color="tab:green", label="backbone_std")
    ys += _plot_epochs(
        ax, epochs, "projection_std", "s--", color="tab:grey", label="projection_std (BatchNorm-ended: ~1 always)"
    )
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    if collapse_warn is not None:
        ax.axhline(collapse_warn, color="tab:orange", lw=0.8, ls="--", label="warning level")
    if min_std is not None:
        ax.axhline(min_std, color="tab:red", lw=0.8, ls="--", label="--stop-on-collapse level")
    ax.set(
        title="std(normalised features) * sqrt(dim)  (0 collapsed)", xlabel="epoch", ylim=(0, max([1.1, *ys]) * 1.05)
    )
    ax.title.set_fontsize(9)
    _legend(ax)


def _plot_rankme(ax, epochs: Rows, min_rank: float | None) -> None:
    ys = _plot_epochs(ax, epochs, "backbone_rankme", "o-", color="tab:cyan", label="backbone_rankme")
    if min_rank is not None:
        ax.axhline(min_rank, color="tab:red", lw=0.8, ls="--", label="--stop-on-collapse level")
    ax.set(title="backbone RankMe (effective rank; 1 collapsed)", xlabel="epoch", ylim=(0, max([2.0, *ys]) * 1.1))
    ax.title.set_fontsize(9)
    _legend(ax)


def _plot_entropy(ax, epochs: Rows) -> None:
    if not _plot_epochs(ax, epochs, "assigner_entropy", "o-", color="tab:orange", label="assigner_entropy"):
        ax.text(0.5, 0.5, "no cluster head", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="assigner usage entropy / log K  (1 even, 0 one cluster)", xlabel="epoch", ylim=(0, 1.05))
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
    min_std: float | None = None,
    min_rank: float | None = None,
) -> Path:
    """Draw the six panels from the logged rows and write the PNG atomically.

    ``min_std`` / ``min_rank``: the --stop-on-collapse levels to draw (None: not drawn).
    """
    require("matplotlib", "matplotlib", "the training plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 3, figsize=(15, 7.5))
    (a_loss, a_clu, a_lr), (a_std, a_rank, a_ent) = ax
    _plot_losses(a_loss, epochs, steps)
    _plot_clusters(a_clu, epochs, num_clusters)
    _plot_lr(a_lr, steps)
    _plot_std(a_std, epochs, collapse_warn, min_std)
    _plot_rankme(a_rank, epochs, min_rank)
    _plot_entropy(a_ent, epochs)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
