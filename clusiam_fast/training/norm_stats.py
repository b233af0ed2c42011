"""Normalisation statistics cached per run as ``OUT/norm_stats.json``.

The cache is keyed by the data's fingerprint (folder, file count, names; or the
manifest's path, size and mtime), so pointing the same OUT at other data
recomputes it. Nothing is written outside OUT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.stats import dataset_mean_std
from ..utils.atomic import atomic_write_json

STATS_FILE = "norm_stats.json"


def load_or_compute_stats(
    out_dir: Path, source, *, max_images: int, seed: int, workers: int, progress: bool = True
) -> dict[str, Any]:
    """Read ``out_dir/norm_stats.json`` when it matches ``source``; else compute and write it."""
    path = out_dir / STATS_FILE
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("fingerprint") == source.fingerprint and cached.get("max_images") == max_images:
                return cached
        except (OSError, ValueError):
            pass  # unreadable cache: recompute
    try:
        mean, std = dataset_mean_std(
            source.dataset, max_images=max_images, seed=seed, num_workers=workers, progress=progress
        )
    except ValueError as error:
        raise ValueError(f"data {source.path}: {error}") from error
    if min(std) <= 1e-6:
        raise ValueError(f"data {source.path}: the images are constant in a colour channel (std {std}); check the data")
    stats = {
        "mean": mean,
        "std": std,
        "fingerprint": source.fingerprint,
        "max_images": max_images,
        "images": min(len(source), max_images),
        "seed": seed,
    }
    atomic_write_json(path, stats)
    return stats
