"""The one place the package reads torch files: ``torch.load(weights_only=True)``, pickle only when asked.

``weights_only=True`` unpickles tensors, numbers, strings, lists, tuples and dicts only, so a
file cannot run code while it is read. Every checkpoint the trainer writes loads so. Checkpoints
of the first format (before this module) also held numpy's RNG state as an ``ndarray``: the numpy
globals that rebuild such an array (and nothing else) are allowed while reading. A file that
needs any other object is refused (:class:`PickleRefusedError`) unless ``trust_pickle``
(``--trust-pickle``) says the user trusts where it came from. :func:`strip_prefixes` removes the
wrapper prefixes (:data:`WRAPPER_PREFIXES`) off the keys of what was read.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

# What wrappers put before every key of a state_dict: DDP / DataParallel (``module.``), and the
# attribute a model was saved under in another codebase's checkpoint. The one list every loader strips.
WRAPPER_PREFIXES = ("module.", "model.", "backbone.", "encoder.")


def strip_prefixes(state: dict[str, Any], prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, Any]:
    """``state`` with each of ``prefixes`` (in order) removed where *every* key starts with it."""
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


class PickleRefusedError(ValueError):
    """The file holds pickled objects that ``torch.load(weights_only=True)`` refuses; ``--trust-pickle`` loads it."""


def _old_checkpoint_globals() -> list:
    """What rebuilds the numpy RNG state (a uint32 ``ndarray``) that format-1 checkpoints hold."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), reconstruct]
    # Files written under numpy 1 name the function numpy.core.multiarray._reconstruct.
    allowed.append((reconstruct, "numpy.core.multiarray._reconstruct"))
    return allowed


_OLD_CHECKPOINT_NAMES = {
    f"numpy.{name}" for name in ("_core.multiarray._reconstruct", "core.multiarray._reconstruct", "ndarray", "dtype")
} | {"numpy.dtypes.UInt32DType"}


def _refused_globals(path: Path, error: Exception) -> list[str] | None:
    """The globals (classes, functions) a weights_only load refused; None when the error is about something
    else (a damaged file, or no pickle at all)."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint (legacy format, or not a torch file): torch cannot list them
        names = []
    names = [name for name in names if name not in _OLD_CHECKPOINT_NAMES]
    return names or ([] if "GLOBAL" in str(error) else None)  # torch's messages name the GLOBAL opcode


def load_torch_file(path: str | os.PathLike, *, trust_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (numpy RNG arrays of old checkpoints allowed).

    A file that needs pickle raises :class:`PickleRefusedError` (one line naming ``--trust-pickle``),
    unless ``trust_pickle``: then it is loaded with ``weights_only=False``, which can run code it holds.
    Other errors (truncated file, not a torch file) propagate (``pickle.UnpicklingError`` for a file
    that is no pickle at all).
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_old_checkpoint_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        names = _refused_globals(path, error)
        if names is None:  # torch's text would suggest weights_only=False: say what it is instead
            raise pickle.UnpicklingError("not a readable torch file (damaged, or not written by torch.save)") from error
        if not trust_pickle:
            held = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") if names else "pickled objects"
            raise PickleRefusedError(
                f"{path} holds {held}, which only a full pickle load can read, and that can run code embedded "
                "in the file: refused; pass --trust-pickle only if you trust where the file came from"
            ) from None
    return torch.load(path, map_location=map_location, weights_only=False)  # --trust-pickle: the user's choice
