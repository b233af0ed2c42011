"""CLAM-compatible patch-coordinate files (one HDF5 file per slide).

Layout (what CLAM's ``create_patches_fp.py`` writes, so CLAM loads ours as-is):

- dataset ``coords``: (N, 2) int64, level-0 (x, y) of each patch's top-left corner;
- attributes of ``coords``: ``patch_size`` (px read at ``patch_level``: CLAM reads
  ``read_region(xy, patch_level, (patch_size, patch_size))``), ``patch_level``,
  ``downsample`` (x, y of that level), ``level_dim`` and ``downsampled_level_dim``
  ((width, height) of that level), ``name`` (slide id);
- ours on top: ``mpp`` (level 0), ``target_mpp``, ``output_size`` (px after resizing,
  224 by default), ``mpp_source``, ``slide_path``, ``backend``.

Files made elsewhere lack our extras; :func:`read_coords_h5` fills ``output_size`` with
``patch_size`` then (CLAM does not resize).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_path
from ..utils.deps import require

CLAM_ATTRS = ("patch_size", "patch_level", "downsample", "level_dim", "downsampled_level_dim", "name")


def write_coords_h5(path: str | Path, coords: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write ``coords`` and ``attrs`` atomically; ``attrs`` must hold every CLAM attribute."""
    h5py = require("h5py", "h5py", "writing patch coordinate files")
    missing = [key for key in CLAM_ATTRS if key not in attrs]
    if missing:
        raise ValueError(f"{path}: missing CLAM attributes {missing}")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            dataset = f.create_dataset(
                "coords", data=coords, maxshape=(None, 2), chunks=(max(1, min(len(coords), 4096)), 2)
            )
            for key, value in attrs.items():
                dataset.attrs[key] = value
    return path


def read_coords_h5(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(coords (N, 2) int64, attributes) of a CLAM or clusiam_fast coordinate file."""
    h5py = require("h5py", "h5py", "reading patch coordinate files")
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise ValueError(f"{path}: no 'coords' dataset; is it a CLAM patch file?")
            dataset = f["coords"]
            coords = np.asarray(dataset[:], dtype=np.int64).reshape(-1, 2)
            attrs = {key: _plain(value) for key, value in dataset.attrs.items()}
    except OSError as error:
        raise ValueError(f"{path}: cannot read it as HDF5 ({error})") from error
    if "patch_size" not in attrs:
        raise ValueError(f"{path}: the 'coords' dataset has no 'patch_size' attribute; cannot tell what to read")
    attrs.setdefault("patch_level", 0)
    attrs.setdefault("output_size", attrs["patch_size"])
    attrs.setdefault("name", path.stem)
    return coords, attrs


def _plain(value: Any) -> Any:
    """h5py attribute -> plain Python (numbers, str, tuples)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return tuple(v.item() if hasattr(v, "item") else v for v in value.ravel())
    if isinstance(value, np.generic):
        return value.item()
    return value
