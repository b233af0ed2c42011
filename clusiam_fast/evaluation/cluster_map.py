"""Cluster maps (each patch's cluster) and score heatmaps (e.g. MIL attention) over the slide thumbnail.

Thumbnails come from the slide file (``clusiam_fast.slides`` readers: the
manifest's backend, else any that opens it), else from the tiler's QA thumbnail, else a
white canvas. Patches
are painted as rectangles of the coordinate grid's step (the tiler's stride at level 0;
``read_size`` when a slide has a single row and column). Cluster colours are fixed per
cluster id, so the same cluster has the same colour on every slide. An optional
annotation mask (any image of the slide's aspect, non-zero inside) is drawn as a contour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_path
from ..utils.deps import require


@dataclass
class Thumbnail:
    image: np.ndarray  # (h, w, 3) uint8
    level0_size: tuple[int, int]  # (width, height) of the slide at level 0
    origin: str


def _reader_thumbnail(path: str, backend: str, max_size: int) -> Thumbnail:
    from ..slides import open_slide

    with open_slide(path, backend) as slide:
        w0, h0 = slide.dimensions
        image, _ = slide.thumbnail(max(w0, h0) / max_size)
        return Thumbnail(np.ascontiguousarray(image[..., :3]), (int(w0), int(h0)), f"slide ({slide.backend})")


def _level0_size_from_h5(h5_path: str | None) -> tuple[int, int] | None:
    if not h5_path or not Path(h5_path).is_file():
        return None
    h5py = require("h5py", "h5py", "tiler coordinate files")
    with h5py.File(h5_path, "r") as f:
        a = f["coords"].attrs if "coords" in f else f.attrs
        if "level_dim" in a and "downsample" in a:
            dim, down = np.asarray(a["level_dim"], dtype=float), np.asarray(a["downsample"], dtype=float)
            return int(round(dim[0] * down[0])), int(round(dim[1] * down[-1]))
    return None


def slide_thumbnail(
    attrs: dict[str, Any], max_size: int = 2048, fallback_size: tuple[int, int] | None = None
) -> Thumbnail:
    """Best available thumbnail of a bag's slide (see the module docstring)."""
    from PIL import Image

    errors = []
    path = attrs.get("slide_path")
    if path and Path(path).is_file():
        for backend in dict.fromkeys([str(attrs.get("backend") or "auto"), "auto"]):
            try:
                return _reader_thumbnail(str(path), backend, max_size)
            except Exception as error:  # try the next backend, then the fallbacks
                errors.append(f"{backend}: {error}")
    qa, size = attrs.get("thumbnail"), _level0_size_from_h5(attrs.get("h5_path")) or fallback_size
    if qa and Path(qa).is_file() and size:
        with Image.open(qa) as img:
            return Thumbnail(np.asarray(img.convert("RGB")), size, "tiler QA thumbnail")
    if size is None:
        raise ValueError(
            f"no thumbnail and no slide size for {attrs.get('slide_id', '?')} ({'; '.join(errors) or 'no slide_path'})"
        )
    scale = max_size / max(size)
    return Thumbnail(
        np.full((max(1, int(size[1] * scale)), max(1, int(size[0] * scale)), 3), 255, np.uint8), size, "blank canvas"
    )


def grid_step(coords: np.ndarray, default: int) -> int:
    """Smallest positive spacing of the x and y coordinates (the tiling stride)."""
    steps = []
    for axis in (0, 1):
        d = np.diff(np.unique(coords[:, axis]))
        if len(d):
            steps.append(int(d.min()))
    return min(steps) if steps else int(default)


def cluster_colours(cluster_ids: np.ndarray) -> np.ndarray:
    """A fixed RGB colour (floats in [0, 1]) per cluster id: the 10 strong tab20 colours, then
    their light partners, tab20b and tab20c, then golden-ratio hues."""
    import colorsys

    from matplotlib import colormaps

    tab20 = colormaps["tab20"](np.arange(20))[:, :3]
    table = np.concatenate(
        [tab20[0::2], tab20[1::2]] + [colormaps[n](np.arange(20))[:, :3] for n in ("tab20b", "tab20c")]
    )
    out = np.empty((len(cluster_ids), 3))
    for i, c in enumerate(np.asarray(cluster_ids, dtype=np.int64)):
        out[i] = table[c] if 0 <= c < len(table) else colorsys.hsv_to_rgb((c * 0.618033988749895) % 1.0, 0.75, 0.9)
    return out


def paint_clusters(
    shape: tuple[int, int], coords: np.ndarray, clusters: np.ndarray, scale: float, footprint: int
) -> np.ndarray:
    """(h, w) int array: the cluster of the patch covering each thumbnail pixel, -1 elsewhere."""
    h, w = shape
    canvas = np.full((h, w), -1, dtype=np.int64)
    x0 = np.floor(coords[:, 0] * scale).astype(int)
    y0 = np.floor(coords[:, 1] * scale).astype(int)
    x1 = np.maximum(x0 + 1, np.ceil((coords[:, 0] + footprint) * scale).astype(int))
    y1 = np.maximum(y0 + 1, np.ceil((coords[:, 1] + footprint) * scale).astype(int))
    for a, b, c, d, k in zip(y0, y1, x0, x1, clusters):
        canvas[max(a, 0) : min(b, h), max(c, 0) : min(d, w)] = k
    return canvas


def _annotation(mask_path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(mask_path) as m:
        return np.asarray(m.convert("L").resize((shape[1], shape[0]), Image.NEAREST)) > 0


def save_cluster_map(
    out_png: str | Path,
    coords: np.ndarray,
    clusters: np.ndarray,
    attrs: dict[str, Any],
    *,
    title: str = "",
    annotation: str | Path | None = None,
    max_size: int = 2048,
    alpha: float = 0.55,
    max_legend: int = 20,
    names: dict[int, str] | None = None,
) -> dict:
    """Write the cluster map PNG of one slide; return what was drawn (for the report). ``names``: legend
    names of the painted ids (default ``cluster <id>``), e.g. the centres when the map is coloured by centre."""
    require("matplotlib", "matplotlib", "cluster maps")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    clusters = np.asarray(clusters, dtype=np.int64)
    footprint = grid_step(coords, int(attrs.get("read_size") or attrs.get("patch_size") or 224))
    extent = (int(coords[:, 0].max()) + footprint, int(coords[:, 1].max()) + footprint)
    thumb = slide_thumbnail(attrs, max_size, fallback_size=extent)
    h, w = thumb.image.shape[:2]
    scale = w / thumb.level0_size[0]
    canvas = paint_clusters((h, w), coords, clusters, scale, footprint)
    ids, counts = np.unique(clusters, return_counts=True)
    colours = cluster_colours(ids)
    overlay = np.zeros((h, w, 4))
    painted = canvas >= 0
    index = np.searchsorted(ids, canvas[painted])  # ids are sorted and unique
    overlay[painted, :3] = colours[index]
    overlay[painted, 3] = alpha

    fig_w = 8.0
    fig, ax = plt.subplots(figsize=(fig_w + 2.5, fig_w * h / w + 0.6))
    ax.imshow(thumb.image)
    ax.imshow(overlay)
    if annotation is not None:
        ax.contour(_annotation(annotation, (h, w)).astype(float), levels=[0.5], colors="black", linewidths=1.5)
    ax.set_axis_off()
    ax.set_title(title or f"{attrs.get('slide_id', '')}: {len(coords)} patches, {len(ids)} clusters")
    order = np.argsort(-counts)
    named = names or {}
    handles = [
        Patch(color=colours[i], label=f"{named.get(int(ids[i]), f'cluster {ids[i]}')} ({counts[i]})")
        for i in order[:max_legend]
    ]
    if len(order) > max_legend:
        handles.append(
            Patch(
                color="lightgrey", label=f"{len(order) - max_legend} more clusters ({counts[order[max_legend:]].sum()})"
            )
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return {
        "png": str(out_png),
        "thumbnail": thumb.origin,
        "patches": int(len(coords)),
        "clusters": int(len(ids)),
        "footprint_level0_px": footprint,
        "annotation": str(annotation) if annotation else None,
    }


def save_score_map(
    out_png: str | Path,
    coords: np.ndarray,
    scores: np.ndarray,
    attrs: dict[str, Any],
    *,
    title: str = "",
    max_size: int = 2048,
    alpha: float = 0.6,
    cmap: str = "jet",
) -> dict:
    """Write a heatmap PNG of per-patch ``scores`` (e.g. MIL attention) over the slide thumbnail.

    Scores are shown as their percentile within the slide (as CLAM's heatmaps do), so the
    colours compare patches of one slide, not slides.
    """
    require("matplotlib", "matplotlib", "attention heatmaps")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colormaps

    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(coords):
        raise ValueError(f"{len(scores)} scores for {len(coords)} patch coordinates")
    footprint = grid_step(coords, int(attrs.get("read_size") or attrs.get("patch_size") or 224))
    extent = (int(coords[:, 0].max()) + footprint, int(coords[:, 1].max()) + footprint)
    thumb = slide_thumbnail(attrs, max_size, fallback_size=extent)
    h, w = thumb.image.shape[:2]
    canvas = paint_clusters((h, w), coords, np.arange(len(coords)), w / thumb.level0_size[0], footprint)
    percentile = (np.argsort(np.argsort(scores, kind="stable"), kind="stable") + 0.5) / len(scores)
    overlay = np.zeros((h, w, 4))
    painted = canvas >= 0
    overlay[painted] = colormaps[cmap](percentile[canvas[painted]])
    overlay[painted, 3] = alpha

    fig_w = 8.0
    fig, ax = plt.subplots(figsize=(fig_w + 1.5, fig_w * h / w + 0.6))
    ax.imshow(thumb.image)
    ax.imshow(overlay)
    ax.set_axis_off()
    ax.set_title(title or f"{attrs.get('slide_id', '')}: {len(coords)} patches", fontsize=9)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, 100))
    fig.colorbar(mappable, ax=ax, fraction=0.04, label="score percentile within the slide")
    fig.tight_layout()
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return {"png": str(out_png), "thumbnail": thumb.origin, "patches": int(len(coords))}
