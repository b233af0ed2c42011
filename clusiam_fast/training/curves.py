"""``OUT/training.png``: loss curves, active clusters, collapse monitor and lr, redrawn each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_path
from ..utils.deps import require


def plot_training(
    epochs: list[dict[str, Any]],
    steps: list[dict[str, Any]],
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

    def series(rows, key, x="step"):
        pts = [(r[x], r[key]) for r in rows if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for key, colour in (("loss", "k"), ("inv_loss", "tab:blue"), ("cluster_loss", "tab:orange")):
        xs, ys = series(steps, key)
        if xs:
            a_loss.plot(xs, ys, color=colour, alpha=0.35, lw=1)
        ex, ey = series(epochs, key)
        if ex:
            a_loss.plot(ex, ey, "o-", color=colour, label=f"{key} (epoch mean)")
    a_loss.set(title="losses (thin: recent steps; dots: epoch means)", xlabel="step")
    if a_loss.get_legend_handles_labels()[0]:
        a_loss.legend(fontsize=8)

    for key, style in (("active_clusters", "o-"), ("active_clusters_gumbel", "s--")):
        xs, ys = series(epochs, key, "epoch")
        if xs:
            a_clu.plot(xs, ys, style, label=key)
    a_clu.set(title=f"active clusters (of K = {num_clusters})" if num_clusters else "active clusters", xlabel="epoch")
    a_clu.yaxis.get_major_locator().set_params(integer=True)
    if num_clusters:
        a_clu.set_ylim(0, num_clusters * 1.05)
    if a_clu.get_legend_handles_labels()[0]:
        a_clu.legend(fontsize=8)
    else:
        a_clu.text(0.5, 0.5, "no cluster head", ha="center", va="center", transform=a_clu.transAxes)

    xs, ys = series(epochs, "collapse_std", "epoch")
    a_col.plot(xs, ys, "o-", color="tab:green")
    a_col.axhline(1.0, color="grey", lw=0.8, ls=":")
    if collapse_warn is not None:
        a_col.axhline(collapse_warn, color="tab:red", lw=0.8, ls="--", label="warning level")
        a_col.legend(fontsize=8)
    a_col.set(
        title="collapse monitor: std(normalised z) * sqrt(dim)  (1 healthy, 0 collapsed)",
        xlabel="epoch",
        ylim=(0, max([1.1, *ys]) if ys else 1.1),
    )
    a_col.title.set_fontsize(9)

    xs, ys = series(steps, "lr")
    a_lr.plot(xs, ys, color="tab:purple")
    a_lr.set(title="learning rate", xlabel="step")

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
