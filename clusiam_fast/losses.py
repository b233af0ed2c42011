"""nn.Module form of the cluster loss."""

from __future__ import annotations

import torch
from torch import nn

from .functional import cluster_loss


class ClusterLoss(nn.Module):
    """CluSiam cluster loss as a module; see :func:`clusiam_fast.cluster_loss`.

    Example::

        criterion = ClusterLoss(tau=1.0)
        loss = criterion(torch.cat([z1, z2]).detach(), torch.cat([a1, a2]))
    """

    def __init__(self, tau: float = 1.0, eps: float = 1e-8, impl: str = "auto", process_group=None):
        super().__init__()
        self.tau, self.eps, self.impl, self.process_group = tau, eps, impl, process_group

    def forward(self, z: torch.Tensor, logits: torch.Tensor, gumbel: torch.Tensor | None = None) -> torch.Tensor:
        return cluster_loss(
            z, logits, tau=self.tau, gumbel=gumbel, eps=self.eps, impl=self.impl, process_group=self.process_group
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, eps={self.eps}, impl={self.impl!r}"
