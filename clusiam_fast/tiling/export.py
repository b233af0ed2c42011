"""Optional export of the patches as image files (``--save-tiles jpg|png``).

Files go to ``TILES/<slide_id>/<slide_id>_<x>_<y>.<ext>`` (level-0 x, y, CLAM-style names).
The folder is filled under a temporary name and renamed when complete, so a crash never
leaves a half-written folder under the final name.

``device="cuda"`` decodes the patches on the GPU with cuCIM (``slides.iter_patches``) and
copies them to the host only to encode the files. Damaged tile data raises
:class:`CorruptTileError`, or with ``on_corrupt="skip"`` those patches are not written and
their positions returned.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..slides import CorruptTileError, SlideReader, iter_patches, patch_image
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
    *,
    device: str = "cpu",
    on_corrupt: str = "fail",
) -> list[int]:
    """Read every patch at ``coords``, resize to ``plan.patch_size`` and save in ``folder``.

    Returns the positions in ``coords`` of the patches skipped on corrupt tile data (only
    with ``on_corrupt="skip"``; otherwise the first such patch raises).
    """
    if fmt not in FORMATS:
        raise ValueError(f"tile format must be one of {sorted(FORMATS)}, got {fmt!r}")
    pil_format, options = FORMATS[fmt]
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        coords = np.asarray(coords, np.int64).reshape(-1, 2)
        skipped: list[int] = []

        def save(item: tuple[np.ndarray, np.ndarray]) -> None:
            region, (x, y) = item
            patch_image(region, plan.patch_size).save(tmp / f"{slide_id}_{x}_{y}.{fmt}", format=pil_format, **options)

        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            for start in range(0, len(coords), batch_size):
                chunk = coords[start : start + batch_size]
                items = _read_chunk(reader, chunk, plan, device, num_workers, on_corrupt == "skip", skipped, start)
                list(pool.map(save, items))
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
    return skipped


def _host(batch) -> np.ndarray:
    return batch.cpu().numpy() if hasattr(batch, "cpu") else np.asarray(batch)


def _read_chunk(reader, chunk, plan, device, num_workers, skip, skipped, start) -> list:
    """(pixels, (x, y)) of one chunk; in skip mode a damaged chunk is read patch by patch."""

    def read(locs):
        batches = iter_patches(
            reader, locs, plan.level, plan.read_size, device, num_workers=num_workers, batch_size=len(locs)
        )
        return np.concatenate([_host(b) for b in batches])

    try:
        return list(zip(read(chunk), chunk))
    except CorruptTileError:
        if not skip:
            raise
    items = []
    for k, xy in enumerate(chunk):
        try:
            items.append((read(chunk[k : k + 1])[0], xy))
        except CorruptTileError:
            skipped.append(start + k)
    return items
