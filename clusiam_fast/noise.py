"""Gumbel(0, 1) noise drawn the same way by the reference and the fused CPU op."""

import torch

_TINY = torch.finfo(torch.float32).tiny


def sample_gumbel(like: torch.Tensor) -> torch.Tensor:
    """Float32 Gumbel noise of ``like``'s shape, from torch's generator: g = -log(E), E ~ Exp(1).

    E is floored at the smallest normal float so that g stays finite.
    """
    exp = torch.empty(like.shape, dtype=torch.float32, device=like.device).exponential_()
    return exp.clamp_(min=_TINY).log_().neg_()
