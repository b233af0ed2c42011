"""The fused cluster loss: torch.ops.clusiam.assign_pool -> (all-reduce) -> centroid_loss."""

from __future__ import annotations

import torch

from .._extension import LOAD_ERROR
from ..distributed import all_reduce_sums

if LOAD_ERROR is None:
    from . import registration  # noqa: F401


def cluster_loss(z, logits, *, tau, gumbel, eps, group, return_assignments):
    """Inputs already checked by clusiam_fast.cluster_loss; group is None or a ProcessGroup."""
    z = z.detach()
    if z.dtype == torch.float64:  # the kernels compute in float32 anyway
        z = z.float()
    if logits.dtype == torch.float64:
        logits = logits.float()
    _y, idx, _inv_norm, sums, counts = torch.ops.clusiam.assign_pool(z, logits, gumbel, float(tau), float(eps))
    sums, counts = all_reduce_sums(sums, counts, group)
    loss = torch.ops.clusiam.centroid_loss(sums, counts, float(eps))[0]
    return (loss, idx) if return_assignments else loss
