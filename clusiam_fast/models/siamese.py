"""SimSiam and CluSiam: one shared encoder, a predictor, a stop-gradient target.

Chen & He, "Exploring Simple Siamese Representation Learning", CVPR 2021;
Wu et al., "Improving Representation Learning for Histopathologic Images with
Cluster Constraints" (CluSiam), ICCV 2023.
"""

from __future__ import annotations

import torch

from .base import SelfSupervisedModel
from .outputs import PairOutput


class SimSiam(SelfSupervisedModel):
    """SimSiam, plus CluSiam's cluster head when ``num_clusters`` is set.

    Example::

        model = SimSiam(arch="resnet18", out_dim=2048, proj_hidden=None, pred_hidden=512,
                        pred_first_bias=False, projector_end="bn", num_clusters=100, cluster_hidden=512)
        out = model(x1, x2)
        loss = -(F.cosine_similarity(out.p1, out.t2).mean() + F.cosine_similarity(out.p2, out.t1).mean())
        loss = (1 - alpha) * loss + alpha * clusiam_fast.cluster_loss(
            torch.cat([out.z1, out.z2]).detach(), torch.cat([out.a1, out.a2]))
    """

    method = "simsiam"

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> PairOutput:
        z1, z2 = self.project(x1), self.project(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        # The cluster head sees z with gradient (it trains the encoder too); only the
        # centroids inside the cluster loss use z detached.
        return PairOutput(z1, z2, p1, p2, z1.detach(), z2.detach(), self.assign(z1), self.assign(z2))
