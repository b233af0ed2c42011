"""Pure-PyTorch reference of the CluSiam cluster loss.

It follows the published code (``final_cluster_similarity`` in the CluSiam
repository) operation by operation: a dense one-hot product, the K x K Gram
matrix of the normalised centroids and the mean of its nonzero strict upper
triangle, replaced by 1.0 when fewer than two clusters are used. It is the
ground truth of the fused op's tests. Costs O(M K D + K^2 D) and a host sync
(``torch.nonzero``).

:func:`sample_gumbel` is the one Gumbel sampler of the package: the reference, the
fused CPU path and the trainer draw their noise with it (the C++ CPU kernel, called
directly without noise, draws the same numbers; CUDA draws the same law in-kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._distributed import all_reduce_sums, resolve_group

_TINY = torch.finfo(torch.float32).tiny


def sample_gumbel(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Float32 Gumbel(0, 1) noise of ``like``'s shape: g = -log(E), E ~ Exp(1) from ``generator``.

    ``generator=None`` uses torch's default generator (reproducible under
    ``torch.manual_seed``). E is floored at the smallest normal float so that g stays finite.
    """
    exp = torch.empty(like.shape, dtype=torch.float32, device=like.device).exponential_(generator=generator)
    return exp.clamp_(min=_TINY).log_().neg_()


def cluster_loss(
    z: torch.Tensor,
    logits: torch.Tensor,
    *,
    tau: float = 1.0,
    gumbel: torch.Tensor | None = None,
    eps: float = 1e-8,
    process_group=None,
    return_assignments: bool = False,
    compute_dtype: torch.dtype = torch.float32,
):
    """Reference cluster loss; see :func:`clusiam_fast.cluster_loss` for the arguments.

    ``compute_dtype`` is the precision of every step (float32 by default, like the
    fused op); tests pass the input's low precision to measure the plain-PyTorch
    error that the fused op is held against.
    """
    group = resolve_group(process_group)
    z = z.detach().to(compute_dtype)  # sg(Z): no gradient into the projections
    if gumbel is None:
        gumbel = sample_gumbel(logits)
    x = logits.to(compute_dtype) + gumbel.to(compute_dtype)

    reps = F.normalize(z, dim=1, eps=eps)
    soft = torch.softmax(x / tau, dim=1)
    index = soft.max(dim=-1, keepdim=True)[1]
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    hard = hard - soft.detach() + soft  # straight-through: one-hot value, softmax gradient

    sums = hard.T @ reps
    counts = hard.sum(dim=0)
    sums, counts = all_reduce_sums(sums, counts, group)
    centers = sums / counts.unsqueeze(1).maximum(torch.ones((), dtype=counts.dtype, device=counts.device))
    centers = F.normalize(centers, dim=1, eps=eps)

    gram = torch.triu(centers @ centers.T, diagonal=1)
    flat = gram.flatten()
    loss = flat[torch.nonzero(flat)].mean()
    loss = torch.nan_to_num(loss, 1.0).float()
    if return_assignments:
        return loss, index.squeeze(1)
    return loss
