"""BYOL and CluBYOL: an online encoder regressing onto a momentum (EMA) target encoder.

Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020; the CluBYOL variant of
Wu et al. (ICCV 2023) adds the cluster head on the online projections.
"""

from __future__ import annotations

import copy

import torch

from .base import SelfSupervisedModel
from .outputs import PairOutput


class BYOL(SelfSupervisedModel):
    """BYOL with a target encoder (backbone + projector) updated by EMA after each step.

    The target runs in training mode (BatchNorm on batch statistics) without
    gradient. Call :meth:`update_target` after ``optimizer.step()``.
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

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> PairOutput:
        z1, z2 = self.project(x1), self.project(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_backbone(x1))
            t2 = self.target_projector(self.target_backbone(x2))
        return PairOutput(z1, z2, p1, p2, t1, t2, self.assign(z1), self.assign(z2))
