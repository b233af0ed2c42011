"""OUT, the run folder: the checks the CLI and :func:`~clusiam_fast.training.train` make before writing.

Torch-free at import (the CLI checks its arguments before torch loads): the checkpoint
is read, with torch, only when there is a run to continue. Both callers go through
:func:`open_run_folder`, so --out and --resume are checked, and worded, in one place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import check_out_path

CHECKPOINT = "checkpoint.pt"  # the run's checkpoint in OUT (see training/checkpoint.py)


def read_resume_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, Any]:
    """``read_checkpoint`` for --resume: a damaged file gives one line that says what to do (ValueError)."""
    from ..models import read_checkpoint  # torch: only when there is a run to continue
    from ..utils.torch_files import PickleRefusedError

    try:
        return read_checkpoint(path, trust_pickle=trust_pickle)
    except PickleRefusedError as error:
        raise PickleRefusedError(f"--resume: {error}") from None
    except ValueError as error:
        kept = path.parent / "checkpoints"
        copies = f"copy one of {kept}/epoch_NNNN.pt over it, " if kept.is_dir() and any(kept.glob("*.pt")) else ""
        raise ValueError(f"--resume: {error}; {copies}start again with --overwrite, or choose another --out") from None


def check_resume_method(saved: dict[str, Any], method: str, path: Path) -> None:
    """--resume continues a run with its own method: the method defines the model."""
    if "method" in saved and saved["method"] != method:
        raise ValueError(
            f"--resume: {path} was trained with --method {saved['method']}, this run asks for --method "
            f"{method}; the method defines the model: leave --method out to continue that run, or train "
            f"{method} in another --out"
        )


def open_run_folder(
    out: str | os.PathLike, *, resume: bool, trust_pickle: bool = False, method: str | None = None
) -> dict[str, Any] | None:
    """Check that --out is (or can become) a folder, and read the checkpoint that --resume continues.

    None when there is none to continue (no --resume, or no checkpoint in OUT yet). With
    ``method``, a checkpoint of another method is refused (:func:`check_resume_method`).
    Raises :class:`~.config.OutPathError` when --out is a file, ValueError for a damaged checkpoint.
    """
    check_out_path(out)
    path = Path(out) / CHECKPOINT
    if not (resume and path.exists()):
        return None
    ckpt = read_resume_checkpoint(path, trust_pickle)
    if method is not None:
        check_resume_method(ckpt["config"], method, path)
    return ckpt
