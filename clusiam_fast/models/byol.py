"""BYOL: an online encoder regressing onto a momentum (EMA) target encoder.

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020. CluBYOL (:mod:`.clubyol`)
adds a cluster head on the online projections.
"""

from __future__ import annotations

import copy

import torch

from .base import MethodSpec, SelfSupervisedModel, cross_view_cosines, reduce_pair
from .outputs import PairOutput


class BYOL(SelfSupervisedModel):
    """BYOL with a target encoder (backbone + projector) updated by EMA after each step.

    With ``num_clusters`` set it also carries CluBYOL's cluster head. The target runs in
    training mode (BatchNorm on batch statistics) without gradient. The trainer calls
    :meth:`after_optimizer_step` (= :meth:`update_target`) after each ``optimizer.step()``.
    """

    method = "byol"

    def __init__(self, *, momentum: float = 0.99, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BYOL: momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum
        self.target_backbone = copy.deepcopy(self.backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_parameters():
            p.requires_grad_(False)

    def online_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.backbone.parameters(), *self.projector.parameters()]

    def target_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.target_backbone.parameters(), *self.target_projector.parameters()]

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- momentum * target + (1 - momentum) * online, for every parameter."""
        torch._foreach_lerp_(self.target_parameters(), self.online_parameters(), 1.0 - self.momentum)

    def after_optimizer_step(self) -> None:
        """The target follows the online encoder by EMA after each step, as published."""
        self.update_target()

    def invariance_loss(self, out: PairOutput, reduction: str = "sum") -> torch.Tensor:
        """BYOL's form, both directions summed: (1 - cos(p1, t2)) + (1 - cos(p2, t1)) in [0, 4]; "mean" halves it."""
        c12, c21 = cross_view_cosines(out)
        return reduce_pair((1 - c12) + (1 - c21), reduction)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> PairOutput:
        h1, h2 = self.backbone(x1), self.backbone(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        return PairOutput(z1, z2, p1, p2, t1, t2, self.assign(z1), self.assign(z2), h1, h2)


METHOD = MethodSpec.of(BYOL)  # defaults: the "byol" row of clusiam_fast/choices.py
"""BYOL with the heads and training of the published Cluster_BYOL code, without the cluster head.

Heads: ``Cluster_BYOL(out_dim=256, hidden_dim=4096)``: 256-d projections, a 4096-d predictor with
first bias (``nn.Linear(out_dim, hidden_dim)``); cluster_hidden is unused. Target: ``self.momentum = 0.99``,
``param_k.data * self.momentum + param_q.data * (1. - self.momentum)`` after each step. Loss: the BYOL form,
``1 - cos(p1, t2.detach()).mean() + 1 - cos(p2, t1.detach()).mean()``. fix_pred_lr off
(``optim_params = model.parameters()`` in ``main_clubyol.py``).
"""
