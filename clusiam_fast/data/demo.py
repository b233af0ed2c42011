"""A small offline patch set for the demo: crops of scikit-image's immunohistochemistry image.

``skimage.data.immunohistochemistry()`` is real stained tissue (512 x 512 RGB)
shipped inside scikit-image: nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..utils.deps import require

# The trainer's --demo settings (each can still be overridden on the command line).
DEMO_DEFAULTS = dict(crop_size=64, batch_size=32, epochs=5, num_clusters=16, workers=1, log_every=2)


def make_demo_patches(
    out_dir: str | os.PathLike, num_patches: int = 512, min_size: int = 64, max_size: int = 96, seed: int = 0
) -> Path:
    """Write ``num_patches`` random crops (random size, flips, 90-degree turns) as PNGs into ``out_dir``.

    The folder is filled under a temporary name and renamed when complete; an
    existing ``out_dir`` is reused as is. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.glob("*.png")):
        return out_dir
    if not 0 < min_size <= max_size <= 512:
        raise ValueError(f"make_demo_patches: need 0 < min_size <= max_size <= 512, got {min_size}, {max_size}")
    skdata = require("skimage.data", "scikit-image", "the --demo patches")
    tissue = np.asarray(skdata.immunohistochemistry())
    rng = np.random.default_rng(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for i in range(num_patches):
            size = int(rng.integers(min_size, max_size + 1))
            y, x = (int(v) for v in rng.integers(0, tissue.shape[0] - size + 1, size=2))
            crop = tissue[y : y + size, x : x + size]
            crop = np.rot90(crop, k=int(rng.integers(4)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            Image.fromarray(np.ascontiguousarray(crop)).save(tmp / f"ihc_{i:04d}.png")
        if out_dir.exists() and not any(out_dir.glob("*.png")):  # an empty leftover folder
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process (torchrun rank) finished first: keep its folder
            if not any(out_dir.glob("*.png")):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir
