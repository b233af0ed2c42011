"""Per-slide tiling parameters from a CSV (``--slide-params FILE``), as CLAM's process list gives them.

Columns: ``slide_id`` (or TRIDENT's ``wsi``, a file name) and any of

- ``mpp``: level-0 microns per pixel, for a slide whose metadata has none (as ``--slide-mpp-csv``);
- ``min_tissue``: the tissue fraction a patch needs (``--min-tissue``);
- ``tissue_threshold``: the lowest saturation taken as tissue (the floor of the Otsu threshold, 0.05);
- ``min_area_um2``: the smallest tissue piece kept, in square microns (10,000);
- ``keep``: ``0`` / ``no`` / ``false`` leaves the slide out of the run (CLAM's ``process`` column).

An empty cell keeps the run's value. Slides not in the file (or with every cell empty) use the
run's settings.

Every run writes ``OUT/slide_params.csv``: each slide of its inputs with the values it was given
(blank: the run's), as CLAM writes ``process_list_autogen.csv``. Edit it and pass it back with
``--slide-params OUT/slide_params.csv``.

Each listed slide's parameters are written to ``OUT/params/<slide_id>.json`` (only when they
change) and that file is one of the slide's inputs: a re-run after editing the CSV redoes just
the slides whose row changed (or was added or removed), and skips the others.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..slides import slide_id_from_path
from ..utils.atomic import atomic_write_text

COLUMNS = ("mpp", "min_tissue", "tissue_threshold", "min_area_um2", "keep")
_NO, _YES = {"0", "no", "false", "n", "exclude"}, {"1", "yes", "true", "y", "keep"}


def read_slide_params(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{slide_id: {column: value}}`` of the CSV at ``path``; ValueError naming the file, line and column when wrong."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [(c or "").strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"--slide-params {path}: cannot be read ({error})") from None
    key = "slide_id" if "slide_id" in columns else "wsi" if "wsi" in columns else None
    unknown = [c for c in columns if c not in (*COLUMNS, "slide_id", "wsi")]
    if key is None or unknown:
        raise ValueError(
            f"--slide-params {path}: needs a slide_id (or wsi) column and any of {', '.join(COLUMNS)}; "
            f"has {columns}{f', unknown: {unknown}' if unknown else ''}"
        )
    table: dict[str, dict[str, Any]] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        name = row.get(key, "")
        if not name:
            continue
        slide_id = slide_id_from_path(name) if key == "wsi" else name
        if slide_id in table:
            raise ValueError(f"--slide-params {path} line {line}: {slide_id} is listed twice")
        table[slide_id] = {c: _value(path, line, c, row[c]) for c in COLUMNS if row.get(c)}
    return table


def _value(path: Path, line: int, column: str, text: str) -> Any:
    if column == "keep":
        if text.lower() not in _NO | _YES:
            raise ValueError(f"--slide-params {path} line {line}: keep {text!r} is not 1/0, yes/no or true/false")
        return text.lower() in _YES
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    fraction = column in ("min_tissue", "tissue_threshold")
    if not math.isfinite(value) or value < 0 or (fraction and value > 1) or (column == "mpp" and value == 0):
        what = "a fraction within [0, 1]" if fraction else "a positive number"
        raise ValueError(f"--slide-params {path} line {line}: {column} {text!r} is not {what}")
    return value


def apply_slide_params(config, params: dict[str, Any]):
    """``config`` (a TileConfig) with a slide's parameters over it."""
    changes: dict[str, Any] = {}
    if "mpp" in params:
        changes["slide_mpp"] = params["mpp"]
    if "min_tissue" in params:
        changes["min_tissue"] = params["min_tissue"]
    tissue = {}
    if "tissue_threshold" in params:
        tissue["min_saturation"] = params["tissue_threshold"]
    if "min_area_um2" in params:
        tissue["min_object_um2"] = params["min_area_um2"]
    if tissue:
        changes["tissue"] = replace(config.tissue, **tissue)
    return replace(config, **changes) if changes else config


def params_files(out_dir: str | Path, slide_ids: list[str], table: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """Write ``OUT/params/<slide_id>.json`` of each listed slide where it changed, remove those of unlisted ones;
    returns ``{slide_id: file}`` of the listed slides (each becomes one of its slide's inputs)."""
    folder = Path(out_dir) / "params"
    files: dict[str, Path] = {}
    for slide_id in slide_ids:
        file = folder / f"{slide_id}.json"
        if not table.get(slide_id):  # unlisted, or a row of empty cells: the run's settings
            file.unlink(missing_ok=True)
            continue
        text = json.dumps(table[slide_id], sort_keys=True) + "\n"
        if not file.is_file() or file.read_text() != text:
            atomic_write_text(file, text, durable=False)
        files[slide_id] = file
    return files


def write_params_template(out_dir: str | Path, slide_ids: list[str], table: dict[str, dict[str, Any]]) -> Path:
    """``OUT/slide_params.csv``: a row per slide, with its parameters from ``table`` (blank: the run's)."""
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("slide_id", *COLUMNS))
    for slide_id in sorted(slide_ids):
        given = table.get(slide_id, {})
        writer.writerow((slide_id, *(_text(given.get(c)) for c in COLUMNS)))
    path = Path(out_dir) / "slide_params.csv"
    atomic_write_text(path, text.getvalue(), durable=False)
    return path


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"{value:g}"


def load_params(file: str | Path) -> dict[str, Any]:
    """A slide's parameters, as :func:`params_files` wrote them."""
    return json.loads(Path(file).read_text())
