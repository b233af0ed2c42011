"""Small trainer runs shared by the training tests: a tiny config, the log rows, file digests."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from clusiam_fast.training import TrainConfig


def small_config(data, out, **overrides) -> TrainConfig:
    """A run that takes seconds on a CPU: 32-px crops, batch 8, K = 10, one epoch, no workers."""
    values = dict(
        data=str(data),
        out=str(out),
        crop_size=32,
        batch_size=8,
        num_clusters=10,
        epochs=1,
        workers=0,
        log_every=1,
        progress=False,
        tensorboard=False,
        max_stat_images=64,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def file_digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
