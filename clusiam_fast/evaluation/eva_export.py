"""Feature bags + a label table -> eva's embeddings layout (:mod:`clusiam_fast.formats.eva_embeddings`).

patches.csv (``path`` or ``slide_id,x,y`` and ``label``): one ``[D]`` tensor per labelled patch, for
eva's patch heads; slides.csv (``slide_id,label``): one ``[N, D]`` tensor per labelled slide with its
``wsi_id``, for eva's slide (MIL) heads. Targets index the sorted classes; ``split`` is the table's
(``train``/``test``; ``val`` rows count as ``train``, as everywhere here), blank when it has none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..formats.eva_embeddings import EvaItem, write_eva_embeddings
from ..formats.feature_bags import FeatureBag, safe_name
from .labels import join_patch_labels, read_csv, read_slide_table


def _classes(labels) -> list[str]:
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def _origin(key) -> str:
    return f"{key[0]}@{key[1]},{key[2]}" if isinstance(key, tuple) else str(key)


def eva_items(bags: list[FeatureBag], labels_csv: str | Path) -> tuple[list[EvaItem], list[str], str]:
    """The manifest rows of ``bags`` labelled in ``labels_csv``, the classes, and the task ('patch' or 'slide')."""
    columns = set(read_csv(labels_csv, "labels").columns)
    if "path" in columns or {"slide_id", "x", "y"} <= columns:
        table = join_patch_labels(bags, labels_csv)
        classes = _classes(table.labels)
        split = table.split if table.split is not None else [""] * len(table.labels)
        items = [
            EvaItem(f"{i:07d}_{safe_name(_origin(key))}", _origin(key), table.features[i], classes.index(y), s or "")
            for i, (key, y, s) in enumerate(zip(table.keys, table.labels, split))
        ]
        return items, classes, "patch"
    labels = read_slide_table(labels_csv).labels
    labelled = [b for b in bags if b.slide_id in labels]
    if not labelled:
        raise ValueError(f"--eva-manifest: no bag's slide_id is labelled in {labels_csv}")
    classes = _classes(labels[b.slide_id][0] for b in labelled)
    items = [
        EvaItem(
            safe_name(b.slide_id),
            str(b.attrs.get("slide_path") or b.slide_id),
            np.asarray(b.features),
            classes.index(labels[b.slide_id][0]),
            labels[b.slide_id][1] or "",
            wsi_id=b.slide_id,
        )
        for b in labelled
    ]
    return items, classes, "slide"


def write_eva_manifest(bags: list[FeatureBag], labels_csv: str | Path, folder: str | Path) -> tuple[Path, int, str]:
    """Write eva's layout into ``folder``; (manifest path, items, task)."""
    items, classes, task = eva_items(bags, labels_csv)
    return write_eva_embeddings(folder, items, classes), len(items), task
