"""Slide and patch label tables, joined with feature bags.

``slides.csv``: columns ``slide_id,label`` and optionally ``split`` (``train`` or
``test``; ``val``/``valid`` rows join the training pool, because the protocol makes its
own validation split of the training slides).

``patches.csv``: a ``label`` column and either ``path`` (image path relative to the
extracted DATA folder, or absolute, or a unique file name) or ``slide_id,x,y``
(level-0 coordinates of tiler patches); optionally ``split`` (``train``/``test``) for
the patch KNN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats.feature_bags import FeatureBag

TRAIN_SPLITS = {"train", "training", "val", "valid", "validation"}
TEST_SPLITS = {"test", "testing"}


def _read_csv(path: str | Path, what: str):
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


def read_slide_labels(path: str | Path) -> dict[str, tuple[str, str | None]]:
    """slide_id -> (label, split or None)."""
    df = _read_csv(path, "slide labels")
    missing = {"slide_id", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} needs columns slide_id,label[,split]; missing {sorted(missing)}")
    has_split = "split" in df.columns
    out = {}
    for row in df.itertuples(index=False):
        split = normalise_split(row.split, str(path)) if has_split and row.split != "" else None
        out[str(row.slide_id)] = (str(row.label), split)
    return out


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


def read_patch_labels(path: str | Path) -> tuple[dict, str, bool]:
    """key -> (label, split); the key kind ('path' or 'coords') and whether splits are given."""
    df = _read_csv(path, "patch labels")
    if "label" not in df.columns:
        raise ValueError(f"{path} needs a label column")
    has_split = "split" in df.columns
    if "path" in df.columns:
        kind = "path"
        keys = [str(p).replace("\\", "/") for p in df["path"]]
    elif {"slide_id", "x", "y"} <= set(df.columns):
        kind = "coords"
        keys = [(str(s), int(float(x)), int(float(y))) for s, x, y in zip(df["slide_id"], df["x"], df["y"])]
    else:
        raise ValueError(f"{path} needs either a path column or slide_id,x,y columns besides label")
    splits = (
        [normalise_split(s, str(path)) if s != "" else None for s in df["split"]] if has_split else [None] * len(df)
    )
    return {k: (str(lbl), s) for k, lbl, s in zip(keys, df["label"], splits)}, kind, has_split


def join_patch_labels(bags: list[FeatureBag], path: str | Path) -> PatchTable:
    """The labelled patches of ``bags`` (patches without a label are left out and counted)."""
    table, kind, has_split = read_patch_labels(path)
    by_name: dict[str, str] = {}
    if kind == "path":
        names = [Path(k).name for k in table]
        if len(set(names)) == len(names):
            by_name = {Path(k).name: k for k in table}
    feats, labels, splits, clusters, slides = [], [], [], [], []
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
    )
