"""The study's data, linked (never copied) into ``OUT/data``: the training sample and the evaluation sets.

From class folders (``data.class_folders: ROOT`` with ``ROOT/<class>/*.jpg``, e.g.
PCam's ``valid/{0,1}``) the study builds, with its seed:

- ``OUT/data/eval/knn/<class>/``: ``knn_per_class`` patches per class, alternately
  ``train`` and ``test`` in ``OUT/data/patches.csv`` (KNN F1 from train to test;
  assigner vs K-means on all of them);
- ``OUT/data/eval/bags/bag_NNN/``: ``mil_bags`` pseudo-slides of ``bag_size`` patches
  drawn from the other patches of ROOT; half the bags are positive and hold between 1
  and half their size patches of ``positive_class`` (the rest from the other classes),
  the others none: the label (``positive``/``negative``) is "any positive patch", the MIL assumption of a tumour
  slide (Camelyon16). Every fourth bag of each label is a ``test`` slide in
  ``OUT/data/slides.csv``; the MIL protocol takes its validation bags from the rest.

No patch is in two sets, so KNN, clustering and MIL never see a patch twice. Each set has a
done record (``OUT/data/done/{train,eval}.json``, :mod:`.records`); a set without one for
its settings is built again from scratch.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..utils.atomic import atomic_write_text
from .config import list_images
from .records import forget, is_done, legacy_hash, write_done


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src.resolve(), dst)


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _fresh(folder: Path, settings: dict) -> bool:
    """True when ``folder`` was built completely with these settings (its done record says so); otherwise
    it is removed, with its record, to be built again."""
    old = folder / ".done.json"  # the marker of studies written before
    if is_done(folder.parent, folder.name, settings, legacy=(old, legacy_hash(settings), folder)):
        return True
    forget(folder.parent, folder.name)
    if folder.exists():
        shutil.rmtree(folder)
    return False


def _record(folder: Path, settings: dict, info: dict, outputs: list[str]) -> None:
    """Record ``folder`` (a set of ``OUT/data``) as built, with the other ``outputs`` it wrote."""
    write_done(folder.parent, folder.name, [], settings, info, [folder.name, *outputs])


def train_sample(root: Path, n: int, seed: int, out: Path) -> tuple[Path, dict]:
    """A seeded sample of ``n`` images of ``root``, linked flat into ``out``; (folder, description)."""
    settings = {"root": str(root), "n": n, "seed": seed}
    info = {"source": str(root), "sample": n, "seed": seed}
    if _fresh(out, settings):
        return out, info
    images = list_images(root)
    if len(images) < n:
        raise ValueError(f"data.train_sample: {root} holds {len(images)} images, fewer than the {n} asked for")
    chosen = sorted(np.random.default_rng(seed).choice(len(images), size=n, replace=False).tolist())
    for j, i in enumerate(chosen):
        rel = images[i].relative_to(root)
        _link(images[i], out / f"{j:06d}_{'__'.join(rel.parts)}")
    _record(out, settings, info, [])
    return out, info


def class_folder_sets(data: dict, seed: int, out: Path) -> dict[str, Any]:
    """Build ``out/eval`` (knn/ and bags/), ``out/patches.csv`` and ``out/slides.csv``; describe them."""
    root, classes = data["class_folders"], data["classes"]
    per_class, n_bags, (low, high) = data["knn_per_class"], data["mil_bags"], data["bag_size"]
    positive = data["positive_class"]
    settings = {"root": str(root), "classes": classes, "knn": per_class, "bags": n_bags, "size": [low, high]}
    settings.update(positive=positive, seed=seed)
    folder = out / "eval"
    files = {
        "eval": folder,
        "patch_labels": out / "patches.csv",
        "slide_labels": out / "slides.csv" if n_bags else None,
    }
    rng = np.random.default_rng(seed)
    pools = {c: list_images(root / c) for c in classes}
    pools = {c: [found[i] for i in rng.permutation(len(found))] for c, found in pools.items()}
    info = {
        "built_from": str(root),
        "classes": classes,
        "knn_patches_per_class": per_class,
        "mil_bags": n_bags,
        "bag_size": [low, high],
        "positive_class": positive,
        "seed": seed,
        "rule": f"a bag is 'positive' when it holds any patch of class {positive!r}, else 'negative'",
    }
    if _fresh(folder, settings):
        return {**files, "info": info}
    patch_rows = []
    for c in classes:
        if len(pools[c]) < per_class:
            raise ValueError(f"data.knn_per_class: {root / c} holds {len(pools[c])} images, fewer than {per_class}")
        for j, src in enumerate(pools[c][:per_class]):
            rel = Path("knn") / c / f"{j:05d}_{src.name}"
            _link(src, folder / rel)
            patch_rows.append({"path": rel.as_posix(), "label": c, "split": "train" if j % 2 == 0 else "test"})
        pools[c] = pools[c][per_class:]
    negatives = [p for c in classes if c != positive for p in pools[c]]
    negatives = [negatives[i] for i in rng.permutation(len(negatives))]
    positives = pools[positive]
    slide_rows, seen = [], {"positive": 0, "negative": 0}
    for b in range(n_bags):
        size = int(rng.integers(low, high))
        n_pos = int(rng.integers(1, size // 2 + 1)) if b % 2 else 0
        if len(positives) < n_pos or len(negatives) < size - n_pos:
            raise ValueError(
                f"data.mil_bags: {root} runs out of patches at bag {b} of {n_bags} (after {per_class} per class "
                "for the KNN set); lower mil_bags, bag_size or knn_per_class"
            )
        members = [positives.pop() for _ in range(n_pos)] + [negatives.pop() for _ in range(size - n_pos)]
        bag = f"bag_{b:03d}"
        for j, src in enumerate(members):
            _link(src, folder / "bags" / bag / f"{j:02d}_{src.name}")
        label = "positive" if n_pos else "negative"
        seen[label] += 1
        split = "test" if seen[label] % 4 == 0 else "train"
        slide_rows.append({"slide_id": f"bags/{bag}", "label": label, "split": split})
    atomic_write_text(files["patch_labels"], _csv(patch_rows, ["path", "label", "split"]))
    if slide_rows:
        atomic_write_text(files["slide_labels"], _csv(slide_rows, ["slide_id", "label", "split"]))
    _record(folder, settings, info, [files[k].name for k in ("patch_labels", "slide_labels") if files[k]])
    return {**files, "info": info}
