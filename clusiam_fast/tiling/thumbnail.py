"""Quality-control picture of one tiled slide: thumbnail, tissue mask and patch grid.

The slide keeps its true colours (so that staining and decoding faults can be judged); the
tissue mask is drawn as green outlines, as CLAM draws its contours; each kept patch is a
blue square; a title bar gives the slide id, the patch count and the resolution. Drawn with Pillow (exact pixel
sizes, no matplotlib start-up cost in every worker process).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path
from .grid import patch_boxes


def draw_qa_thumbnail(
    rgb: np.ndarray,
    rgb_downsample: tuple[float, float],
    mask: np.ndarray,
    coords: np.ndarray,
    footprint: float,
    title: str,
    max_side: int = 1024,
):
    """A PIL image of ``rgb`` (the slide at ``rgb_downsample``) with the mask and patches drawn."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.fromarray(rgb)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    size = image.size
    downsample = (rgb_downsample[0] * rgb.shape[1] / size[0], rgb_downsample[1] * rgb.shape[0] / size[1])

    tissue = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)
    outline = _widen(np.asarray(tissue.filter(ImageFilter.FIND_EDGES)))  # 3 px wide: visible
    image.paste((0, 200, 0), mask=Image.fromarray(outline))

    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in patch_boxes(coords, footprint, downsample):
        draw.rectangle((int(x0), int(y0), int(x1) - 1, int(y1) - 1), outline=(30, 60, 230))

    bar = 16
    canvas = Image.new("RGB", (size[0], size[1] + bar), (255, 255, 255))
    canvas.paste(image, (0, bar))
    ImageDraw.Draw(canvas).text((3, 2), title, fill=(0, 0, 0))
    return canvas


def _widen(edges: np.ndarray) -> np.ndarray:
    """The 3 x 3 maximum of ``edges`` (uint8; edge pixels repeated past the border): Pillow's ``MaxFilter(3)``,
    at a tenth of its cost."""
    padded = np.pad(edges, 1, mode="edge")
    rows = np.maximum(np.maximum(padded[:-2], padded[1:-1]), padded[2:])
    return np.maximum(np.maximum(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])


def save_qa_thumbnail(path: str | Path, image) -> Path:
    """Write the PIL ``image`` as PNG, atomically (zlib level 1: two thirds of the default's time, a file
    5% larger). Not fsynced: one emptied by a machine crash is named and its slide redone
    (``cohort/records.py``), so an fsync per slide is not worth its time."""
    path = Path(path)
    with atomic_path(path, durable=False) as tmp:
        image.save(tmp, format="PNG", compress_level=1)  # fast: 4x quicker than the default 6
    return path
