"""Per-slide microns per pixel from a CSV (``--slide-mpp-csv``), for slides whose metadata has none.

Columns: ``slide_id`` (or TRIDENT's ``wsi``, a file name: its slide id is taken) and ``mpp``
(level-0 microns per pixel; an empty cell gives none). As with ``--slide-mpp``, a value in a
slide's metadata always wins; a slide's CSV value wins over ``--slide-mpp``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from ..slides import slide_id_from_path


def read_mpp_table(path: str | Path) -> dict[str, float]:
    """``{slide_id: mpp}`` from the CSV at ``path``; ValueError naming the file, line and value when wrong."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"--slide-mpp-csv {path}: cannot be read ({error})") from None
    key = "slide_id" if "slide_id" in columns else "wsi" if "wsi" in columns else None
    if key is None or "mpp" not in columns:
        raise ValueError(f"--slide-mpp-csv {path}: needs the columns slide_id (or wsi) and mpp, has {columns}")
    table: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        name, text = row.get(key, ""), row.get("mpp", "")
        if not name or not text:
            continue
        try:
            mpp = float(text)
        except ValueError:
            mpp = math.nan
        if not (math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"--slide-mpp-csv {path} line {line}: mpp {text!r} is not a positive number")
        slide_id = slide_id_from_path(name) if key == "wsi" else name
        if table.get(slide_id, mpp) != mpp:
            raise ValueError(f"--slide-mpp-csv {path} line {line}: {slide_id} is given two mpp values")
        table[slide_id] = mpp
    return table
