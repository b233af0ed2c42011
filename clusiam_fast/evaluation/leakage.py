"""The leakage guard of ``evaluate``: no test slide, patient or image file may have been seen in
self-supervised training (:mod:`clusiam_fast.formats.pretrain_record`).

The record is read from the features folder (``extract`` copies it there) or beside the
checkpoint named in the bags. The test set is what the evaluation tests on: the MIL test
slides (every slide under ``--folds``, since each is tested once) and their patients, and the
``test`` patches of patches.csv (their slides and, for bags of image folders, their files).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..formats.feature_bags import FeatureBag
from ..formats.pretrain_record import check_pretrain_overlap, find_pretrain_record


def bag_files(bag: FeatureBag, rows: Iterable[int] | None = None) -> list[str]:
    """The image files of a bag of an image folder (none for slide bags)."""
    root = bag.attrs.get("data_root")
    if bag.paths is None or not root:
        return []
    paths = bag.paths if rows is None else [bag.paths[i] for i in rows]
    return [str(Path(root) / p) for p in paths]


def test_slide_ids(slide_ids: list[str], test_splits: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """Every slide some split tests on."""
    return list(dict.fromkeys(slide_ids[int(i)] for _, test in test_splits for i in test))


def guard_pretrain_overlap(
    features: Path,
    bags: list[FeatureBag],
    *,
    allow: bool,
    test_slides: list[str],
    patients: dict[str, str] | None,
    test_files: list[str],
) -> dict:
    """Check the test set against the run's record; PretrainOverlapError unless ``allow`` (see the module docstring)."""
    record = find_pretrain_record(features, bags[0].attrs.get("checkpoint") if bags else None)
    return check_pretrain_overlap(
        record, allow=allow, what="test", test_slides=test_slides, patients=patients, test_files=test_files
    )
