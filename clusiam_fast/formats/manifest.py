"""``manifest.csv``: one row per successfully tiled slide (interface 5 of the project brief).

Columns, in order: ``slide_id, slide_path`` (absolute), ``h5_path`` (relative to the
manifest's folder), ``num_patches, mpp`` (level 0), ``target_mpp, patch_size`` (output px),
``read_level, read_size`` (px read at ``read_level`` before resizing to ``patch_size``),
``backend``, ``thumbnail`` (relative path of the QA PNG), ``corrupt_patches`` (patches
dropped on damaged tile data with ``--on-corrupt-tile skip``; empty in older manifests).

:func:`merge_manifest` is what the tiler writes: rows of an existing manifest stay, rows of
slides tiled again are replaced.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_text

COLUMNS = (
    "slide_id",
    "slide_path",
    "h5_path",
    "num_patches",
    "mpp",
    "target_mpp",
    "patch_size",
    "read_level",
    "read_size",
    "backend",
    "thumbnail",
    "corrupt_patches",
)
_INT = {"num_patches", "patch_size", "read_level", "read_size", "corrupt_patches"}
_FLOAT = {"mpp", "target_mpp"}


def write_manifest(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write the rows atomically (dicts with the columns; a missing one is left empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in COLUMNS})
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def merge_manifest(path: str | Path, rows: Iterable[dict[str, Any]], drop: Iterable[str] = ()) -> tuple[Path, int]:
    """Write ``rows`` into the manifest at ``path``, keeping its other slides; returns (path, rows kept).

    Rows are matched on ``slide_id``: an existing row of a slide in ``rows`` is replaced, those of
    ``drop`` go, the others stay (as written: paths relative to the folder), before the new ones.
    """
    rows = list(rows)
    path = Path(path)
    new_ids = {str(row["slide_id"]) for row in rows} | set(drop)
    old: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if "slide_id" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: exists but is not a tiler manifest; not overwriting it")
            old = [row for row in reader if row.get("slide_id") not in new_ids]
    return write_manifest(path, old + rows), len(old)


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """Rows with typed values; ``h5_path`` and ``thumbnail`` resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; make one with `python -m clusiam_fast.tile`")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("slide_id", "slide_path", "h5_path") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a tiler manifest, columns {missing} are missing")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                for key in _INT & row.keys():
                    optional = key == "corrupt_patches" and row[key] in ("", None)  # older manifests
                    row[key] = 0 if optional else int(row[key])
                for key in _FLOAT & row.keys():
                    row[key] = float(row[key])
            except ValueError as error:
                raise ValueError(f"{path}, line {line}: {error}") from error
            for key in ("h5_path", "thumbnail"):
                if row.get(key):
                    row[key] = str((path.parent / row[key]).resolve())
            rows.append(row)
    return rows
