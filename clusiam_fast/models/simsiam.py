"""SimSiam: one shared encoder, a predictor, a stop-gradient target.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021. CluSiam
(:mod:`.clusiam`) adds a cluster head to this model.
"""

from __future__ import annotations

import torch

from .base import MethodSpec, SelfSupervisedModel, cross_view_cosines, reduce_pair
from .outputs import PairOutput


class SimSiam(SelfSupervisedModel):
    """SimSiam; with ``num_clusters`` set it also carries CluSiam's cluster head.

    Example::

        model = SimSiam(arch="resnet18", out_dim=2048, proj_hidden=None, pred_hidden=512,
                        pred_first_bias=False, projector_end="bn", num_clusters=None, cluster_hidden=512)
        out = model(x1, x2)
        loss = model.invariance_loss(out)  # -(cos(p1, t2) + cos(p2, t1))
    """

    method = "simsiam"

    def invariance_loss(self, out: PairOutput, reduction: str = "sum") -> torch.Tensor:
        """The negative cosine, both directions summed: -(cos(p1, t2) + cos(p2, t1)) in [-2, 2]; "mean" halves it."""
        c12, c21 = cross_view_cosines(out)
        return reduce_pair(-(c12 + c21), reduction)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> PairOutput:
        h1, h2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # The cluster head sees z with gradient (it trains the encoder too); only the
        # centroids inside the cluster loss use z detached.
        return PairOutput(z1, z2, p1, p2, z1.detach(), z2.detach(), self.assign(z1), self.assign(z2), h1, h2)


METHOD = MethodSpec.of(SimSiam)  # defaults: the "simsiam" row of clusiam_fast/choices.py
"""SimSiam as in its paper and the published Cluster_SimSiam code, without the cluster head.

Heads: 2048-d projections and a 512-d bottleneck predictor whose first layer has no bias
(``nn.Linear(out_dim, hidden_dim, bias=False)``); cluster_hidden is unused. Loss: the negative
cosine, summed over both directions as in the published code:
``-(criterion(p[0], z[1].detach()).mean() + criterion(p[1], z[0].detach()).mean())``.
fix_pred_lr on, as in SimSiam ("--fix-pred-lr": the predictor keeps a constant lr).
"""
