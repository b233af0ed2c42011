"""Patch-coordinate files, one HDF5 file per slide, in CLAM's or TRIDENT's convention.

Both keep a dataset ``coords``: (N, 2) level-0 (x, y) of each patch's top-left corner,
with the geometry in its attributes, but they mean different things by ``patch_size``:

- **CLAM** (``wsi_core/WholeSlideImage.py::process_contour``): ``patch_size`` = px read
  at ``patch_level`` (``Whole_Slide_Bag_FP`` reads ``read_region(xy, patch_level,
  (patch_size, patch_size))``, then resizes to ``--target_patch_size``, 224);
  ``downsample`` (x, y of that level), ``level_dim`` and ``downsampled_level_dim``
  ((width, height) of that level), ``name`` (slide id), ``save_path``.
- **TRIDENT** (``trident/IO.py::coords_to_h5``): ``patch_size`` = px at the *target*
  magnification (the size patches are resized to), ``patch_size_level0`` = the same
  patch in level-0 px, ``level0_magnification``, ``target_magnification``, ``overlap``
  (px at the target), ``name``, ``savetodir``, ``level0_width``, ``level0_height``.
  TRIDENT names the file ``<name>_patches.h5``.

When the read level is not at the target resolution (a 40x slide cut at 20x) the two
``patch_size`` differ (CLAM 448 at level 0, TRIDENT 224), so one file cannot serve both:
:func:`write_coords_h5` writes one convention, :func:`coords_format` tells which a file
follows and :func:`read_patch_geometry` turns either into what to read.

Ours on top, in both: ``mpp`` (level 0), ``target_mpp``, ``output_size`` (px after
resizing, 224 by default), ``mpp_source``, ``slide_path``, ``backend``, ``corrupt_patches``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_h5
from ..utils.deps import require

COORDS_FORMATS = ("clam", "trident")
CLAM_ATTRS = ("patch_size", "patch_level", "downsample", "level_dim", "downsampled_level_dim", "name")
TRIDENT_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "level0_magnification",
    "target_magnification",
    "overlap",
    "name",
    "savetodir",
    "level0_width",
    "level0_height",
)
# What CLAM's extract_features_fp.py resizes every patch to (--target_patch_size); files
# made by CLAM itself do not say, so this is the output size their patches get here.
CLAM_TARGET_PATCH_SIZE = 224


def write_coords_h5(path: str | Path, coords: np.ndarray, attrs: dict[str, Any], coords_format: str = "clam") -> Path:
    """Write ``coords`` and ``attrs`` atomically; ``attrs`` must hold the format's attribute set.

    CLAM's ``save_path`` and TRIDENT's ``savetodir`` default to where the file goes.
    """
    h5py = require("h5py", "h5py", "writing patch coordinate files")
    path = Path(path)
    if coords_format == "clam":
        attrs = {"save_path": str(path.parent), **attrs}
        required = CLAM_ATTRS
    elif coords_format == "trident":
        attrs = {"savetodir": str(path.parent.parent), **attrs}
        required = TRIDENT_ATTRS
    else:
        raise ValueError(f"coords format must be one of {COORDS_FORMATS}, got {coords_format!r}")
    missing = [key for key in required if key not in attrs]
    if missing:
        raise ValueError(f"{path}: missing {coords_format.upper()} attributes {missing}")
    if coords_format == "trident" and "patch_level" in attrs:
        raise ValueError(f"{path}: a TRIDENT file must not carry CLAM's patch_level (its patch_size differs)")
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_h5(path, h5py) as f:
        dataset = f.create_dataset(
            "coords", data=coords, maxshape=(None, 2), chunks=(max(1, min(len(coords), 4096)), 2)
        )
        for key, value in attrs.items():
            dataset.attrs[key] = value
    return path


def read_coords_h5(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(coords (N, 2) int64, attributes) of a CLAM, TRIDENT or clusiam_fast coordinate file.

    The attributes are as stored, plus ``coords_format`` (:func:`coords_format`) and
    ``name`` (the file stem, less TRIDENT's ``_patches``, when absent).
    """
    h5py = require("h5py", "h5py", "reading patch coordinate files")
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "coords" not in f:
                raise ValueError(f"{path}: no 'coords' dataset; is it a CLAM or TRIDENT patch file?")
            dataset = f["coords"]
            coords = _coords_array(path, dataset)
            attrs = {key: _plain(value) for key, value in dataset.attrs.items()}
    except OSError as error:
        raise ValueError(f"{path}: cannot read it as HDF5 ({error})") from error
    if "patch_size" not in attrs:
        raise ValueError(f"{path}: the 'coords' dataset has no 'patch_size' attribute; cannot tell what to read")
    _check_geometry_attrs(path, attrs)
    attrs["coords_format"] = coords_format(attrs)
    attrs.setdefault("name", path.stem.removesuffix("_patches") if attrs["coords_format"] == "trident" else path.stem)
    return coords, attrs


def _coords_array(path: Path, dataset) -> np.ndarray:
    """The (N, 2) integer-valued ``coords`` as int64; any other shape or value is an error naming the file."""
    shape = tuple(dataset.shape)
    if len(shape) != 2 or shape[1] != 2:
        raise ValueError(
            f"{path}: dataset 'coords' has shape {shape}; expected (N, 2) level-0 (x, y) pairs, one row per patch"
        )
    values = np.asarray(dataset[:])
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
    else:  # strings, booleans, ...
        bad = values.ravel()
    if len(bad):
        bad = bad[0].item() if hasattr(bad[0], "item") else bad[0]
        raise ValueError(
            f"{path}: dataset 'coords' (shape {shape}, {values.dtype}) holds {bad!r}; "
            "expected whole level-0 pixel coordinates"
        )
    return values.astype(np.int64)


def _check_geometry_attrs(path: Path, attrs: dict[str, Any]) -> None:
    """ValueError naming the file and the attribute when a geometry attribute cannot be used."""

    def number(key: str, whole: bool, minimum: float, what: str) -> None:
        if key not in attrs:
            return
        value = attrs[key]
        values = value if isinstance(value, (tuple, list)) else (value,)
        ok = len(values) > 0
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < minimum:
                ok = False
            elif whole and v != int(v):
                ok = False
        if not ok:
            raise ValueError(f"{path}: attribute '{key}' of 'coords' is {value!r}; it must be {what}")

    number("patch_size", True, 1, "a positive whole number of pixels")
    number("patch_level", True, 0, "a pyramid level (0, 1, ...)")
    number("output_size", True, 1, "a positive whole number of pixels")
    number("downsample", False, 1e-9, "the positive downsample of patch_level (x, y)")
    number("patch_size_level0", False, 1e-9, "a positive number of level-0 pixels")
    number("level0_magnification", False, 1e-9, "a positive magnification (e.g. 40)")
    number("target_magnification", False, 1e-9, "a positive magnification (e.g. 20)")


def coords_format(attrs: dict[str, Any]) -> str:
    """``"trident"`` when the attributes give the level-0 size or the two magnifications, else ``"clam"``."""
    if "patch_size_level0" in attrs or ("level0_magnification" in attrs and "target_magnification" in attrs):
        return "trident"
    return "clam"


@dataclass(frozen=True)
class PatchGeometry:
    """What to read for each patch of a coordinate file, whatever its convention."""

    coords_format: str
    read_level: int
    read_size: int  # px read at read_level
    output_size: int  # px after resizing
    level0_size: float | None  # side of a patch in level-0 px (None: CLAM file without downsample)


def read_patch_geometry(
    attrs: dict[str, Any],
    level_downsamples: Sequence[float] | None = None,
    output_size: int | None = None,
) -> PatchGeometry:
    """The read level, read size and output size of a file's patches (``attrs`` of :func:`read_coords_h5`).

    - TRIDENT: the patch covers ``patch_size_level0`` level-0 px (else ``patch_size x
      level0_magnification / target_magnification``), is read from the coarsest level of
      ``level_downsamples`` not coarser than the target (level 0 when they are not given)
      and resized to ``patch_size``.
    - CLAM: ``patch_size`` px of ``patch_level`` (as CLAM reads them), resized to our
      ``output_size`` when the file has it, else to CLAM's 224 (``CLAM_TARGET_PATCH_SIZE``).

    ``output_size`` given overrides the output size of either.
    """
    fmt = attrs.get("coords_format") or coords_format(attrs)
    patch_size = int(attrs["patch_size"])
    if fmt == "trident":
        if "patch_size_level0" in attrs:
            level0 = float(attrs["patch_size_level0"])
        else:
            level0 = patch_size * float(attrs["level0_magnification"]) / float(attrs["target_magnification"])
        out = int(output_size or attrs.get("output_size") or patch_size)
        level, read_size = choose_read_level(level0, out, level_downsamples or (1.0,))
        return PatchGeometry(fmt, level, read_size, out, level0)
    level = int(attrs.get("patch_level", 0))
    downsample = attrs.get("downsample")
    if isinstance(downsample, (tuple, list)):
        downsample = downsample[0] if downsample else None
    if downsample is None and level_downsamples is not None and level < len(level_downsamples):
        downsample = level_downsamples[level]
    level0 = None if downsample is None else patch_size * float(downsample)
    out = int(output_size or attrs.get("output_size") or CLAM_TARGET_PATCH_SIZE)
    return PatchGeometry(fmt, level, patch_size, out, level0)


def choose_read_level(
    level0_size: float, output_size: int, level_downsamples: Sequence[float], tolerance: float = 0.01
) -> tuple[int, int]:
    """(level, read size): the coarsest level with at least ``output_size`` px across the patch (1 % tolerance)."""
    wanted = level0_size / max(1, output_size)
    level = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= wanted * (1.0 + tolerance) and ds >= level_downsamples[level]:
            level = i
    return level, max(1, round(level0_size / float(level_downsamples[level])))


def _plain(value: Any) -> Any:
    """h5py attribute -> plain Python (numbers, str, tuples)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return tuple(v.item() if hasattr(v, "item") else v for v in value.ravel())
    if isinstance(value, np.generic):
        return value.item()
    return value
