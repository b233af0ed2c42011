"""Stitched mosaic of the kept patches at low resolution (CLAM's ``stitches``): ``OUT/mosaics/<slide_id>.png``.

Each kept patch is pasted at its place from the slide's low-resolution picture, the one the
tissue mask was found on (no second read of the slide); everything else is black, as in
CLAM, so the picture shows exactly what the patches cover. Longest side ``max_side`` px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path
from .grid import patch_boxes


def stitch_mosaic(
    rgb: np.ndarray, rgb_downsample: tuple[float, float], coords: np.ndarray, footprint: float, max_side: int = 2048
) -> np.ndarray:
    """RGB uint8: ``rgb`` (the slide at ``rgb_downsample``) where a kept patch lies, black elsewhere."""
    from PIL import Image

    scale = min(1.0, max_side / max(rgb.shape[:2]))
    if scale < 1.0:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        rgb_downsample = (rgb_downsample[0] / scale, rgb_downsample[1] / scale)
    covered = np.zeros(rgb.shape[:2], bool)
    for x0, y0, x1, y1 in patch_boxes(coords, footprint, rgb_downsample):
        covered[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return np.where(covered[..., None], rgb, 0).astype(np.uint8)


def save_mosaic(path: str | Path, mosaic: np.ndarray) -> Path:
    """Write the mosaic as PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(mosaic).save(tmp, format="PNG", compress_level=1)
    return path
