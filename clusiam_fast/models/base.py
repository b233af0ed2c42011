"""What every model shares: a backbone, a projector, a predictor and an optional cluster head."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import build_backbone
from .heads import cluster_projector_blocks, mlp, predictor_blocks, projector_blocks


class SelfSupervisedModel(nn.Module):
    """Backbone + projector + predictor (+ cluster projector and assigner when ``num_clusters``).

    Subclasses define ``forward(x1, x2) -> PairOutput``. Attribute names follow the
    published code (``cluster_projector``, ``cluster_assigner``) with the backbone kept
    apart from the projector, so ``model.backbone`` is a plain torchvision ResNet.
    """

    method: str = ""

    def __init__(
        self,
        *,
        arch: str,
        out_dim: int,
        proj_hidden: int | None,
        pred_hidden: int,
        pred_first_bias: bool,
        projector_end: str,
        num_clusters: int | None,
        cluster_hidden: int,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        self.backbone, self.feature_dim = build_backbone(arch, zero_init_residual=zero_init_residual)
        self.projector = mlp(projector_blocks(self.feature_dim, out_dim, proj_hidden, projector_end))
        self.predictor = mlp(predictor_blocks(out_dim, pred_hidden, pred_first_bias))
        self.num_clusters = num_clusters
        if num_clusters:
            self.cluster_projector = mlp(cluster_projector_blocks(out_dim, cluster_hidden))
            self.cluster_assigner = nn.Linear(cluster_hidden, num_clusters)
        else:
            self.cluster_projector = self.cluster_assigner = None

    @property
    def has_clusters(self) -> bool:
        return self.cluster_assigner is not None

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Online projection z = projector(backbone(x))."""
        return self.projector(self.backbone(x))

    def assign(self, z: torch.Tensor) -> torch.Tensor | None:
        """Cluster logits from projections, or None for a model without a cluster head."""
        if self.cluster_assigner is None:
            return None
        return self.cluster_assigner(self.cluster_projector(z))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The representation used downstream: the backbone's pooled output (N, F)."""
        return self.backbone(x)

    def cluster_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Cluster-assigner logits (N, K) for images ``x``."""
        if self.cluster_assigner is None:
            raise RuntimeError(
                f"cluster_logits: a {self.method!r} model has no cluster head; "
                "train with --method clusiam or clubyol to get cluster assignments"
            )
        return self.assign(self.project(x))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by role: "encoder" (backbone + projector), "predictor", "cluster"."""
        groups = {
            "encoder": [*self.backbone.parameters(), *self.projector.parameters()],
            "predictor": list(self.predictor.parameters()),
            "cluster": [],
        }
        if self.cluster_assigner is not None:
            groups["cluster"] = [*self.cluster_projector.parameters(), *self.cluster_assigner.parameters()]
        return {name: [p for p in params if p.requires_grad] for name, params in groups.items()}
