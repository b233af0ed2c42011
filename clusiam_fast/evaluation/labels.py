"""Slide and patch label tables, joined with feature bags.

``slides.csv``: columns ``slide_id,label`` and optionally ``split`` (``train`` or
``test``; ``val``/``valid`` rows join the training pool, because the protocol makes its
own validation split of the training slides) and ``patient_id`` (slides of one patient
stay on one side of every split; every labelled row then needs one, and a slide listed
twice needs the same one).

``patches.csv``: a ``label`` column and either ``path`` (image path relative to the
extracted DATA folder, or absolute, or a unique file name) or ``slide_id,x,y``
(level-0 coordinates of tiler patches); optionally ``split`` (``train``/``test``) for
the patch KNN.

Both tables are checked the same way (rows are named by their line in the file, the
header being line 1):

- labels are normalised: surrounding whitespace is dropped and numbers are written one
  way (``1``, `` 1.0`` and ``1.00`` are all class ``1``; ``0.50`` is ``0.5``), so the
  same class spelt two ways is one class;
- a blank label means "unlabelled": the row is skipped with one warning that names its
  line(s) (a table may list slides not diagnosed yet) -- it never becomes a class "";
- a key (slide, or patch) listed twice with the same label and split is kept once with a
  warning; listed with different labels (or splits) it is an error naming the key, both
  labels and their lines, and the file -- never "the last row wins".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..formats.feature_bags import FeatureBag

TRAIN_SPLITS = {"train", "training", "val", "valid", "validation"}
TEST_SPLITS = {"test", "testing"}


def read_csv(path: str | Path, what: str):
    from ..utils.deps import require

    pd = require("pandas", "pandas", "reading label tables")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def normalise_split(value: str, source: str) -> str:
    v = str(value).strip().lower()
    if v in TRAIN_SPLITS:
        return "train"
    if v in TEST_SPLITS:
        return "test"
    raise ValueError(f"{source}: split must be train or test (val/valid count as train), got {value!r}")


def normalise_label(value: object) -> str:
    """A label as one spelling: stripped; integral numbers without a fraction (``1.0`` -> ``1``)."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    if not math.isfinite(number):
        return text
    if number.is_integer():
        return str(int(number))
    return repr(number)


@dataclass
class LabelTable:
    """Rows of a label table after the checks of the module docstring."""

    labels: dict  # key -> (label, split or None)
    blank_rows: list[int] = field(default_factory=list)  # file lines with a blank label (skipped)
    duplicate_rows: list[int] = field(default_factory=list)  # file lines repeating an earlier row exactly
    patients: dict | None = None  # slide_id -> patient_id, when the table has a patient_id column


def _shown(key: object) -> str:
    return "@".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def _lines(lines: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in lines[:limit])
    return shown + (f" and {len(lines) - limit} more" if len(lines) > limit else "")


def _build_table(path: str | Path, what: str, keys: list, labels: list, splits: list) -> LabelTable:
    """key -> (label, split), refusing conflicting duplicates (see the module docstring)."""
    table = LabelTable(labels={})
    first_line: dict = {}
    conflicts: list[str] = []
    for row, (key, raw, split) in enumerate(zip(keys, labels, splits)):
        line = row + 2  # header is line 1
        label = normalise_label(raw)
        if label == "":
            table.blank_rows.append(line)
            continue
        if key in table.labels:
            if table.labels[key] == (label, split):
                table.duplicate_rows.append(line)
                continue
            old_label, old_split = table.labels[key]
            if old_label != label:
                conflicts.append(
                    f"{what} {_shown(key)} is labelled {old_label!r} (line {first_line[key]}) and {label!r} (line {line})"
                )
            else:
                conflicts.append(
                    f"{what} {_shown(key)} is in split {old_split!r} (line {first_line[key]}) and {split!r} (line {line})"
                )
            continue
        table.labels[key] = (label, split)
        first_line[key] = line
    if conflicts:
        more = f"; and {len(conflicts) - 5} more conflicts" if len(conflicts) > 5 else ""
        raise ValueError(f"{path}: conflicting labels: {'; '.join(conflicts[:5])}{more}; give each {what} one label")
    if table.blank_rows:
        warnings.warn(
            f"{path}: {len(table.blank_rows)} rows with a blank label skipped as unlabelled (lines {_lines(table.blank_rows)})",
            stacklevel=3,
        )
    if table.duplicate_rows:
        warnings.warn(
            f"{path}: {len(table.duplicate_rows)} rows repeat an earlier row exactly and were ignored (lines {_lines(table.duplicate_rows)})",
            stacklevel=3,
        )
    return table


def _slide_patients(path: str | Path, ids: list[str], labels: list, patients: list) -> dict[str, str]:
    """slide_id -> patient_id of the labelled rows; blank or conflicting ids are errors naming lines."""
    out: dict[str, tuple[str, int]] = {}
    blank, conflicts = [], []
    for row, (sid, label, pid) in enumerate(zip(ids, labels, patients)):
        line, pid = row + 2, str(pid).strip()
        if normalise_label(label) == "":
            continue
        if pid == "":
            blank.append(line)
        elif sid in out and out[sid][0] != pid:
            conflicts.append(f"slide {sid} has patient {out[sid][0]!r} (line {out[sid][1]}) and {pid!r} (line {line})")
        else:
            out.setdefault(sid, (pid, line))
    if blank:
        raise ValueError(
            f"{path}: blank patient_id on line(s) {_lines(blank)}; give every labelled slide its patient "
            "(or drop the patient_id column to split by slide)"
        )
    if conflicts:
        raise ValueError(f"{path}: conflicting patient ids: {'; '.join(conflicts[:5])}; give each slide one patient")
    return {sid: pid for sid, (pid, _) in out.items()}


def read_slide_table(path: str | Path) -> LabelTable:
    """slides.csv checked (see the module docstring): ``table.labels`` is slide_id -> (label, split or None),
    ``table.patients`` slide_id -> patient_id (None without a patient_id column)."""
    df = read_csv(path, "slide labels")
    missing = {"slide_id", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} needs columns slide_id,label[,split][,patient_id]; missing {sorted(missing)}")
    has_split = "split" in df.columns
    ids = [str(v).strip() for v in df["slide_id"]]
    blank_ids = [i + 2 for i, v in enumerate(ids) if v == ""]
    if blank_ids:
        raise ValueError(f"{path}: blank slide_id on line(s) {_lines(blank_ids)}; every row needs a slide_id")
    splits = [
        normalise_split(v, f"{path} line {i + 2}") if str(v).strip() != "" else None
        for i, v in enumerate(df["split"] if has_split else [""] * len(df))
    ]
    patients = _slide_patients(path, ids, list(df["label"]), list(df["patient_id"])) if "patient_id" in df else None
    table = _build_table(path, "slide", ids, list(df["label"]), splits)
    table.patients = patients
    return table


def read_slide_labels(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """slide_id -> (label, split or None); see :func:`read_slide_table` for the checks."""
    return read_slide_table(path).labels


@dataclass
class PatchTable:
    """Labelled patches gathered from the bags: features, labels, split, clusters, slide of each."""

    features: np.ndarray
    labels: np.ndarray
    split: np.ndarray | None
    clusters: np.ndarray | None
    slide_ids: np.ndarray
    unmatched_labels: int
    unlabelled_patches: int
    files: list[str] = field(default_factory=list)  # each patch's image file ('' for slide patches)
    keys: list = field(default_factory=list)  # each patch's key in the table (path, or (slide_id, x, y))


def patch_keys(df, path: str | Path) -> tuple[list, str]:
    """Each row's patch key (a path, or (slide_id, x, y)) and the key kind ('path' or 'coords')."""
    if "path" in df.columns:
        return [str(p).strip().replace("\\", "/") for p in df["path"]], "path"
    if {"slide_id", "x", "y"} <= set(df.columns):
        return [
            (str(s).strip(), int(float(x)), int(float(y))) for s, x, y in zip(df["slide_id"], df["x"], df["y"])
        ], "coords"
    raise ValueError(f"{path} needs either a path column or slide_id,x,y columns besides label")


def read_patch_labels(path: str | Path) -> tuple[dict, str, bool]:
    """key -> (label, split); the key kind ('path' or 'coords') and whether splits are given."""
    df = read_csv(path, "patch labels")
    if "label" not in df.columns:
        raise ValueError(f"{path} needs a label column")
    has_split = "split" in df.columns
    keys, kind = patch_keys(df, path)
    splits = [
        normalise_split(v, f"{path} line {i + 2}") if str(v).strip() != "" else None
        for i, v in enumerate(df["split"] if has_split else [""] * len(df))
    ]
    return _build_table(path, "patch", keys, list(df["label"]), splits).labels, kind, has_split


def join_patch_labels(bags: list[FeatureBag], path: str | Path) -> PatchTable:
    """The labelled patches of ``bags`` (patches without a label are left out and counted)."""
    table, kind, has_split = read_patch_labels(path)
    by_name: dict[str, str] = {}
    if kind == "path":
        names = [Path(k).name for k in table]
        if len(set(names)) == len(names):
            by_name = {Path(k).name: k for k in table}
    feats, labels, splits, clusters, slides, files, matched_keys = [], [], [], [], [], [], []
    matched = set()
    unlabelled = 0
    have_clusters = all(b.clusters is not None for b in bags)
    for bag in bags:
        if kind == "path":
            if bag.paths is None:
                raise ValueError(
                    f"{path} labels patches by path but bag {bag.slide_id} has no paths (it came from a slide manifest; use slide_id,x,y)"
                )
            root = bag.attrs.get("data_root", "")
            keys = []
            for p in bag.paths:
                k = p if p in table else f"{root}/{p}" if f"{root}/{p}" in table else by_name.get(Path(p).name)
                keys.append(k)
        else:
            if bag.coords is None:
                raise ValueError(f"{path} labels patches by slide_id,x,y but bag {bag.slide_id} has no coordinates")
            keys = [(bag.slide_id, int(x), int(y)) for x, y in bag.coords]
        rows = [i for i, k in enumerate(keys) if k is not None and k in table]
        unlabelled += len(keys) - len(rows)
        if not rows:
            continue
        matched.update(keys[i] for i in rows)
        feats.append(np.asarray(bag.features[rows]))
        labels += [table[keys[i]][0] for i in rows]
        splits += [table[keys[i]][1] for i in rows]
        if have_clusters:
            clusters.append(bag.clusters[rows])
        slides += [bag.slide_id] * len(rows)
        matched_keys += [keys[i] for i in rows]
        root = bag.attrs.get("data_root")
        files += [str(Path(root) / bag.paths[i]) if root and bag.paths is not None else "" for i in rows]
    if not feats:
        raise ValueError(
            f"no patch of the feature bags is labelled in {path} (keys by {kind}); check the paths/coordinates"
        )
    split_arr = np.asarray(splits, dtype=object) if has_split and all(s is not None for s in splits) else None
    return PatchTable(
        features=np.concatenate(feats),
        labels=np.asarray(labels),
        split=split_arr,
        clusters=np.concatenate(clusters) if have_clusters else None,
        slide_ids=np.asarray(slides),
        unmatched_labels=len(table) - len(matched),
        unlabelled_patches=unlabelled,
        files=files,
        keys=matched_keys,
    )
