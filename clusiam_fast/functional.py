"""clusiam_fast.cluster_loss: the public function."""

from __future__ import annotations

import warnings

import torch

from . import reference
from ._checks import check_cluster_loss_args
from ._extension import FUSED_DEVICE_TYPES, LOAD_ERROR
from .distributed import resolve_group
from .ops import fused

IMPLS = ("auto", "fused", "reference")
_warned_fallback: set[str] = set()


def _choose_impl(impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise ValueError(f"cluster_loss: `impl` must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return impl
    if device.type in FUSED_DEVICE_TYPES:
        return "fused"
    why = (
        f"the clusiam_fast._C extension did not load ({LOAD_ERROR})"
        if LOAD_ERROR is not None
        else f"it was built without {device.type.upper()} kernels"
    )
    if impl == "fused":
        raise RuntimeError(
            f"cluster_loss(impl='fused') on {device.type}: {why}. Rebuild with "
            "`pip install --no-build-isolation -e .` (set CUDA_HOME for the CUDA kernels) "
            "or use impl='reference'."
        )
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        warnings.warn(f"cluster_loss: using the slower reference on {device.type}: {why}", stacklevel=3)
    return "reference"


def cluster_loss(
    z: torch.Tensor,
    logits: torch.Tensor,
    *,
    tau: float = 1.0,
    gumbel: torch.Tensor | None = None,
    eps: float = 1e-8,
    impl: str = "auto",
    process_group=None,
    return_assignments: bool = False,
):
    """CluSiam cluster loss: mean cosine similarity between the centroids of the clusters.

    Wu et al., "Improving Representation Learning for Histopathologic Images with
    Cluster Constraints", ICCV 2023. Each row of ``logits`` is assigned to a cluster
    by a Gumbel-softmax straight-through argmax; the centroids of the L2-normalised
    rows of ``z`` are normalised, and the loss is the mean of their pairwise cosine
    similarities (1.0 when fewer than two clusters are used). Minimising it pushes
    the centroids apart.

    Args:
        z: (M, D) projections of both views, concatenated. Treated as constant (no gradient).
        logits: (M, K) cluster-assigner outputs; the gradient flows here.
        tau: softmax temperature (> 0).
        gumbel: (M, K) Gumbel(0, 1) noise, or None to sample it from torch's generator
            (reproducible under ``torch.manual_seed``). Pass zeros for no noise.
        eps: norm floor.
        impl: "fused" (compiled kernels), "reference" (pure PyTorch, the published
            code's computation) or "auto" (fused when built, else reference with a warning).
        process_group: None, "default" (the initialised default group) or a ProcessGroup:
            centroids over the global batch, gradients scaled for DDP's averaging.
        return_assignments: also return the (M,) int64 cluster index of each row.

    Returns:
        The 0-dim float32 loss, and the assignments when asked for.

    Precision: everything is computed in float32; on CUDA the backward's one matrix
    product follows ``torch.backends.cuda.matmul.allow_tf32`` (off by default).

    Example::

        z, p, logits = ..., ..., ...                # SimSiam outputs plus an assigner head
        loss = (1 - alpha) * simsiam_loss + alpha * clusiam_fast.cluster_loss(z.detach(), logits)
    """
    check_cluster_loss_args(z, logits, gumbel, tau, eps)
    group = resolve_group(process_group)
    if _choose_impl(impl, z.device) == "reference":
        return reference.cluster_loss(
            z, logits, tau=tau, gumbel=gumbel, eps=eps, process_group=group, return_assignments=return_assignments
        )
    return fused.cluster_loss(
        z, logits, tau=tau, gumbel=gumbel, eps=eps, group=group, return_assignments=return_assignments
    )
