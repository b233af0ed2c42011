"""The training objective: (1 - alpha) * L_inv + alpha * L_cluster.

L_inv is the method's symmetric invariance loss between predictions and the other view's
target (``model.invariance_loss(out, reduction)``, defined in each method's file);
L_cluster is :func:`clusiam_fast.cluster_loss` on both views' projections
(concatenated, detached) and cluster logits, for a model with a cluster head.

Scale of L_inv (``reduction``): the published CluSiam / CluBYOL code *sums* the two
symmetric terms (SimSiam form ``-(cos(p1, t2) + cos(p2, t1))``, in [-2, 2]; BYOL
form ``(1 - cos(p1, t2)) + (1 - cos(p2, t1))``, in [0, 4]); the paper's alpha
values were tuned with that scale, so "sum" is the default. "mean" halves it, as
in the SimSiam paper's ``0.5 * (D(p1, z2) + D(p2, z1))``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models.outputs import PairOutput
from ..ops import cluster_loss, sample_gumbel


class LossTerms(NamedTuple):
    """Loss of one step. ``invariance`` and ``cluster`` are unweighted; ``total`` is what is minimised."""

    total: torch.Tensor
    invariance: torch.Tensor
    cluster: torch.Tensor
    assign: torch.Tensor | None = None  # (2N,) argmax of the logits
    assign_noisy: torch.Tensor | None = None  # (2N,) argmax of logits + Gumbel noise (what the loss used)


def training_loss(
    out: PairOutput,
    invariance: torch.Tensor,
    *,
    alpha: float,
    tau: float = 1.0,
    gumbel: bool = True,
    generator: torch.Generator | None = None,
    impl: str = "auto",
    process_group=None,
) -> LossTerms:
    """(1 - alpha) * invariance + alpha * cluster loss for one batch of two views.

    ``invariance`` is the method's ``model.invariance_loss(out, reduction)``; a model without a
    cluster head (``out.a1`` None) is trained on it alone.

    ``gumbel=False`` passes zero noise (the paper's "Joint" ablation, a plain argmax).
    ``process_group="default"`` computes the centroids over the global batch under DDP.
    """
    if out.a1 is None:
        return LossTerms(invariance, invariance, invariance.new_zeros(()))
    z = torch.cat([out.z1, out.z2]).detach().float()
    logits = torch.cat([out.a1, out.a2]).float()
    noise = sample_gumbel(logits, generator) if gumbel else torch.zeros_like(logits)
    clu, assign_noisy = cluster_loss(
        z, logits, tau=tau, gumbel=noise, impl=impl, process_group=process_group, return_assignments=True
    )
    total = (1.0 - alpha) * invariance + alpha * clu
    return LossTerms(total, invariance, clu, logits.detach().argmax(dim=1), assign_noisy)
