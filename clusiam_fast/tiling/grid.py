"""Where to read patches: pyramid level, read size and the grid of level-0 coordinates.

For a slide at ``mpp`` um/px and a target of ``target_mpp`` um/px, one output pixel covers
``d = target_mpp / mpp`` level-0 pixels. We read from the coarsest level whose downsample
is at most ``d`` (1 % tolerance, so 0.499 um/px counts as 0.5), ``read_size =
round(patch_size * d / level_downsample)`` pixels of it, and resize to ``patch_size``.
A 0.25 um/px slide without a 2x level gives 448-px reads; a 0.227 um/px one gives 493.

The grid lies on the read level's pixel grid, from (0, 0), with step ``round(stride * d /
level_downsample)``; only patches entirely inside the slide are kept. Level-0 coordinates
are ``ceil(level_xy * level_downsample)``, which floor back to the same level pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReadPlan:
    """How one slide is cut into patches."""

    level: int
    level_downsample: float
    read_size: int  # px read at ``level``
    step: int  # grid step in px of ``level``
    patch_size: int  # px after resizing
    mpp: float
    target_mpp: float

    @property
    def footprint(self) -> float:
        """Side of one patch in level-0 pixels."""
        return self.read_size * self.level_downsample


def plan_read(
    level_downsamples: Sequence[float],
    mpp: float,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    stride: int | None = None,
    tolerance: float = 0.01,
) -> ReadPlan:
    """Choose the level and read size for ``target_mpp`` (see the module docstring)."""
    if mpp <= 0 or target_mpp <= 0:
        raise ValueError(f"mpp and target mpp must be positive, got {mpp} and {target_mpp}")
    if patch_size < 1 or (stride is not None and stride < 1):
        raise ValueError(f"patch size and stride must be positive, got {patch_size} and {stride}")
    stride = patch_size if stride is None else stride
    wanted = target_mpp / mpp
    level = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= wanted * (1.0 + tolerance) and ds >= level_downsamples[level]:
            level = i
    ds = float(level_downsamples[level])
    scale = wanted / ds
    read_size = max(1, round(patch_size * scale))
    step = read_size if stride == patch_size else max(1, round(stride * scale))
    return ReadPlan(level, ds, read_size, step, patch_size, float(mpp), float(target_mpp))


def grid_coords(plan: ReadPlan, level_dimensions: Sequence[tuple[int, int]]) -> np.ndarray:
    """Level-0 (x, y) int64 (N, 2) of every full patch, row-major (y, then x)."""
    lw, lh = level_dimensions[plan.level]
    xs = np.arange(0, lw - plan.read_size + 1, plan.step, dtype=np.int64)
    ys = np.arange(0, lh - plan.read_size + 1, plan.step, dtype=np.int64)
    if xs.size == 0 or ys.size == 0:
        return np.zeros((0, 2), np.int64)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    level_xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    if plan.level_downsample == 1.0:
        return level_xy
    return np.ceil(level_xy * plan.level_downsample - 1e-6).astype(np.int64)


def patch_boxes(coords: np.ndarray, footprint: float, downsample: tuple[float, float]) -> np.ndarray:
    """Patch squares in the pixels of an image ``downsample`` x smaller than level 0 (N, 4)."""
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    dsx, dsy = downsample
    x0 = np.floor(coords[:, 0] / dsx + 0.5)
    y0 = np.floor(coords[:, 1] / dsy + 0.5)
    x1 = np.maximum(np.floor((coords[:, 0] + footprint) / dsx + 0.5), x0 + 1)
    y1 = np.maximum(np.floor((coords[:, 1] + footprint) / dsy + 0.5), y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def mask_downsample(
    level0_size: tuple[int, int], footprint: float, px_per_patch: int = 16, max_side: int = 4096
) -> float:
    """Downsample of the tissue mask: >= ``px_per_patch`` mask px across a patch, side <= ``max_side``."""
    return max(1.0, footprint / px_per_patch, max(level0_size) / max_side)
