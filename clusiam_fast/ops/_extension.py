"""Loads the compiled ops (clusiam_fast._C) when they were built."""

from __future__ import annotations

import torch

try:
    from .. import _C  # noqa: F401  (registers torch.ops.clusiam.*)

    LOAD_ERROR: str | None = None
except ImportError as error:  # built without the extension, or a broken build
    LOAD_ERROR = str(error)


def _has_kernel(dispatch_key: str) -> bool:
    return LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("clusiam::assign_pool", dispatch_key)


# Device types with compiled kernels, fixed at import (plain data: torch.compile reads it freely).
FUSED_DEVICE_TYPES = frozenset(t for t, key in (("cpu", "CPU"), ("cuda", "CUDA")) if _has_kernel(key))
