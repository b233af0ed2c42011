"""Optional export of the patches as image files (``--save-tiles jpg|png``).

Files go to ``TILES/<slide_id>/<slide_id>_<x>_<y>.<ext>`` (level-0 x, y, CLAM-style names).
The folder is filled under a temporary name and renamed when complete, so a crash never
leaves a half-written folder under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..slides import SlideReader, patch_image
from .grid import ReadPlan

FORMATS = {"jpg": ("JPEG", {"quality": 95}), "png": ("PNG", {"compress_level": 1})}


def export_tiles(
    reader: SlideReader,
    coords: np.ndarray,
    plan: ReadPlan,
    folder: str | Path,
    slide_id: str,
    fmt: str = "jpg",
    num_workers: int = 2,
    batch_size: int = 64,
) -> Path:
    """Read every patch at ``coords``, resize to ``plan.patch_size`` and save; returns the folder."""
    if fmt not in FORMATS:
        raise ValueError(f"tile format must be one of {sorted(FORMATS)}, got {fmt!r}")
    pil_format, options = FORMATS[fmt]
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        coords = np.asarray(coords, np.int64).reshape(-1, 2)
        batches = reader.read_regions(
            coords, plan.level, plan.read_size, num_workers=num_workers, batch_size=batch_size
        )

        def save(item: tuple[np.ndarray, np.ndarray]) -> None:
            region, (x, y) = item
            patch_image(region, plan.patch_size).save(tmp / f"{slide_id}_{x}_{y}.{fmt}", format=pil_format, **options)

        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            start = 0
            for batch in batches:
                list(pool.map(save, zip(batch, coords[start : start + len(batch)])))
                start += len(batch)
        os.chmod(tmp, 0o755)
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
