"""Data parallelism for the cluster loss: global centroids, DDP-consistent gradients.

The per-cluster sums and counts are all-reduced once in the forward, so every
rank computes the loss of the global batch. Each rank's loss is identical and
its backward is local; DDP then *averages* parameter gradients over W ranks, so
the gradient flowing back into the local sums is multiplied by W: after DDP's
average the result equals the single-process gradient over the concatenated
batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def resolve_group(process_group):
    """None -> single process; "default" -> the initialised default group; else the group given."""
    if process_group is None:
        return None
    if isinstance(process_group, str):
        if process_group != "default":
            raise ValueError(
                f"cluster_loss: `process_group` must be None, 'default' or a ProcessGroup, got {process_group!r}"
            )
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "cluster_loss: process_group='default' but torch.distributed is not initialised; "
                "call torch.distributed.init_process_group first (torchrun does it for you) or pass None"
            )
        return dist.group.WORLD
    return process_group


class _AllReduceSums(torch.autograd.Function):
    """Sum (sums, counts) over the group; backward passes W * grad to the local sums."""

    @staticmethod
    def forward(ctx, sums, counts, group):
        ctx.world = dist.get_world_size(group)
        packed = torch.cat([sums, counts.to(sums.dtype).unsqueeze(1)], dim=1)  # one collective
        dist.all_reduce(packed, group=group)
        return packed[:, :-1].contiguous(), packed[:, -1].to(counts.dtype)

    @staticmethod
    def backward(ctx, grad_sums, grad_counts):
        grad = None if grad_sums is None else grad_sums * ctx.world
        return grad, None, None


def all_reduce_sums(sums: torch.Tensor, counts: torch.Tensor, group):
    if group is None:
        return sums, counts
    return _AllReduceSums.apply(sums, counts, group)
