"""Training checkpoints: everything a resumed run needs to continue exactly.

``OUT/checkpoint.pt`` (written atomically) holds, besides the interface keys
``model``, ``config`` and ``epoch`` (completed epochs):

- ``step`` (optimiser steps so far) and ``epoch_step`` (batches done in the
  current, unfinished epoch; 0 at an epoch boundary);
- ``optimizer`` and ``scaler`` state dicts;
- ``ranks``: per rank, the RNG states (torch CPU/CUDA, numpy, python, the Gumbel
  generator; numpy's key as a tensor) and the partial epoch's meters, gathered to rank 0;
- ``records`` (the logged rows), ``norm_stats``, ``world_size``, ``complete``;
- ``schedule``: ``{"steps": N, "source": "..."}``, the optimiser steps the cosine
  spans and what set them; a resumed run keeps it.

Only tensors, numbers, strings, lists, tuples and dicts: the file loads with
``torch.load(weights_only=True)`` (:func:`clusiam_fast.utils.torch_files.load_torch_file`).
Format 1 held numpy's RNG key as an ``ndarray``; such files still load and resume.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models import unwrap
from ..utils.atomic import atomic_path, atomic_torch_save
from .ddp import DistContext
from .run_folder import CHECKPOINT

FORMAT_VERSION = 2  # 2: numpy's RNG key stored as a tensor (weights_only loads)


def _numpy_state_as_tensors(state: tuple) -> tuple:
    """numpy's legacy RNG state with its uint32 key as an int64 tensor (loadable with weights_only=True)."""
    name, key, *rest = state
    return (name, torch.from_numpy(key.astype(np.int64)), *rest)


def capture_rank_state(generator: torch.Generator, meter) -> dict[str, Any]:
    """This rank's RNG states and partial-epoch meters."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_as_tensors(np.random.get_state()),
        "python": random.getstate(),
        "gumbel": generator.get_state(),
        "meter": meter.state_dict(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rank_state(state: dict[str, Any], generator: torch.Generator, meter) -> None:
    torch.set_rng_state(state["torch"])
    name, key, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), *rest))  # a tensor, or format 1's ndarray
    random.setstate(state["python"])
    generator.set_state(state["gumbel"])
    meter.load_state_dict(state["meter"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: Path,
    ctx: DistContext,
    *,
    model,
    optimizer,
    scaler,
    config: dict[str, Any],
    epoch: int,
    epoch_step: int,
    step: int,
    generator: torch.Generator,
    meter,
    records: dict[str, Any],
    norm_stats: dict[str, Any],
    complete: bool,
    keep_as: str | None = None,
    schedule: dict[str, Any] | None = None,
) -> Path | None:
    """Collective: every rank calls it; rank 0 writes ``out_dir/checkpoint.pt`` atomically.

    ``keep_as`` also keeps a copy under ``out_dir/checkpoints/<keep_as>``.
    """
    ranks = ctx.gather_objects(capture_rank_state(generator, meter))
    if not ctx.is_main:
        return None
    ckpt = {
        "format": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "config": config,
        "epoch": epoch,
        "epoch_step": epoch_step,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "ranks": ranks,
        "records": records,
        "norm_stats": norm_stats,
        "world_size": ctx.world,
        "complete": complete,
        "schedule": schedule,
    }
    path = out_dir / CHECKPOINT
    atomic_torch_save(ckpt, path)
    if keep_as:
        with atomic_path(out_dir / "checkpoints" / keep_as) as tmp:
            shutil.copyfile(path, tmp)
    return path
