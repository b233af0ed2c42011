"""Reading and writing feature bags (one HDF5 file per slide); the format is in
:mod:`clusiam_fast.extract`'s docstring.

The files are CLAM-compatible feature files (datasets ``features`` and ``coords``), so
CLAM's ``h5_files/*.h5`` load here too.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_h5, atomic_path
from ..utils.deps import require

INDEX_COLUMNS = ["slide_id", "bag_path", "num_patches", "num_failed"]


def _h5py():
    return require("h5py", "h5py", "feature bags")


@dataclass
class FeatureBag:
    """The patches of one slide: features (N, F) and what else extraction produced."""

    slide_id: str
    features: np.ndarray
    probs: np.ndarray | None = None
    clusters: np.ndarray | None = None
    coords: np.ndarray | None = None
    paths: list[str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.features.shape[0])


def safe_name(slide_id: str) -> str:
    """A file-system-safe file stem for a slide id ('train/0' -> 'train__0')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", slide_id.replace("/", "__").replace("\\", "__")).strip(".")
    return name or "slide"


def write_bag(path: str | Path, bag: FeatureBag) -> Path:
    """Write ``bag`` atomically to ``path`` (HDF5)."""
    h5py = _h5py()
    path = Path(path)
    n = len(bag)
    with atomic_h5(path, h5py, suffix=".h5") as f:
        f.create_dataset("features", data=bag.features)
        if bag.probs is not None:
            f.create_dataset("probs", data=bag.probs)
        if bag.clusters is not None:
            f.create_dataset("clusters", data=np.asarray(bag.clusters, dtype=np.int32))
        if bag.coords is not None:
            f.create_dataset("coords", data=np.asarray(bag.coords, dtype=np.int64).reshape(n, 2))
        if bag.paths is not None:
            f.create_dataset("paths", data=np.array(bag.paths, dtype=object), dtype=h5py.string_dtype())
        f.attrs["slide_id"] = bag.slide_id
        for key, value in bag.attrs.items():
            if value is not None:
                f.attrs[key] = value
    return path


def _attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def read_bag(path: str | Path) -> FeatureBag:
    """Read one bag file (ours or CLAM's) into memory."""
    h5py = _h5py()
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise ValueError(
                    f"{path} has no 'features' dataset; is it a feature bag written by clusiam_fast.extract?"
                )
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            return FeatureBag(
                slide_id=str(attrs.pop("slide_id", path.stem)),
                features=f["features"][()],
                probs=f["probs"][()] if "probs" in f else None,
                clusters=f["clusters"][()].astype(np.int64) if "clusters" in f else None,
                coords=f["coords"][()] if "coords" in f else None,
                paths=[p.decode() if isinstance(p, bytes) else str(p) for p in f["paths"][()]]
                if "paths" in f
                else None,
                attrs=attrs,
                path=path,
            )
    except OSError as error:
        raise OSError(f"cannot read feature bag {path}: {error}") from error


def write_index(folder: str | Path, rows: list[dict]) -> Path:
    """Write ``folder/index.csv`` listing the bags (paths relative to ``folder``)."""
    path = Path(folder) / "index.csv"
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k, "") for k in INDEX_COLUMNS})
    return path


def bag_files(features: str | Path) -> list[Path]:
    """The bag files of an extraction folder (via index.csv), a folder of .h5 files, or one file."""
    root = Path(features)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"features {root} does not exist; pass the --out folder of clusiam_fast.extract")
    index = root / "index.csv"
    if index.exists():
        with open(index, newline="") as f:
            files = [root / row["bag_path"] for row in csv.DictReader(f)]
    else:
        files = sorted((root / "bags").glob("*.h5")) or sorted(root.glob("*.h5"))
    if not files:
        raise FileNotFoundError(
            f"no feature bags (*.h5) found in {root}; run `python -m clusiam_fast.extract CHECKPOINT DATA --out {root}` first"
        )
    return files


def load_bags(features: str | Path) -> list[FeatureBag]:
    """Read every bag of an extraction output (see :func:`bag_files`)."""
    return [read_bag(p) for p in bag_files(features)]
