"""Loads the compiled ops (clusiam_fast._C) when they were built."""

from __future__ import annotations

import torch

try:
    from . import _C  # noqa: F401  (registers torch.ops.clusiam.*)

    LOAD_ERROR: str | None = None
except ImportError as error:  # built without the extension, or a broken build
    LOAD_ERROR = str(error)


def fused_available(device: str | torch.device = "cpu") -> bool:
    """True when the fused cluster-loss kernels are compiled for ``device``'s type."""
    if LOAD_ERROR is not None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("clusiam::assign_pool", key)
