"""eva's embeddings layout (kaiko-ai/eva), so that eva's own heads run on our features.

``FOLDER/manifest.csv`` with the columns eva's embeddings datasets read by default
(``eva.core.data.datasets.embeddings.default_column_mapping``): ``origin`` (the patch or
slide the row stands for), ``embeddings`` (a ``.pt`` file, relative to FOLDER), ``target``
(an integer class), ``split`` (``train``/``val``/``test``) and, for slide tasks, ``wsi_id``
(eva's ``multi_id``). One ``.pt`` per item holds a float32 tensor: ``[D]`` for a patch
(``EmbeddingsClassificationDataset``), ``[N, D]`` for a slide's N patches
(``MultiEmbeddingsClassificationDataset``). ``classes.json`` maps targets to class names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils.atomic import atomic_path, atomic_write_json, atomic_write_text

COLUMNS = ("origin", "embeddings", "target", "split", "wsi_id")


@dataclass
class EvaItem:
    """One manifest row: its name (the .pt file's stem), what it came from, features and target."""

    name: str
    origin: str
    embedding: np.ndarray  # (D,) or (N, D)
    target: int
    split: str
    wsi_id: str = ""


def write_eva_embeddings(folder: str | Path, items: Iterable[EvaItem], classes: list[str]) -> Path:
    """Write the .pt files, then ``manifest.csv`` and ``classes.json``; returns the manifest's path."""
    import torch

    folder = Path(folder)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for item in items:
        rel = f"embeddings/{item.name}.pt"
        with atomic_path(folder / rel) as tmp:
            torch.save(torch.from_numpy(np.asarray(item.embedding, dtype=np.float32).copy()), tmp)
        row = {"origin": item.origin, "embeddings": rel, "target": int(item.target), "split": item.split}
        writer.writerow({**row, "wsi_id": item.wsi_id})
    atomic_write_json(folder / "classes.json", {str(i): c for i, c in enumerate(classes)})
    atomic_write_text(folder / "manifest.csv", buffer.getvalue())
    return folder / "manifest.csv"
