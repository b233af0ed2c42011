"""What every model shares: a backbone, a projector, a predictor and an optional cluster head.

Also :class:`MethodSpec`, the per-method defaults each method file declares next to its model class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

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


@dataclass(frozen=True)
class MethodSpec:
    """One method's model class and defaults; each method file defines one as ``METHOD``.

    Fields:
        name: the ``--method`` name, equal to ``model.method``.
        model: the :class:`SelfSupervisedModel` subclass :func:`~clusiam_fast.models.build_model` builds.
        heads: default head sizes (out_dim, proj_hidden, pred_hidden, pred_first_bias, cluster_hidden);
            proj_hidden None = the backbone's feature size.
        alpha: default weight of the cluster loss in ``(1 - alpha) * L_inv + alpha * L_cluster``.
        fix_pred_lr: default of --fix-pred-lr (the predictor keeps the base lr, no cosine decay).
        loss_form: the invariance loss, "simsiam" (negative cosine) or "byol" (1 - cosine).
        clusters: whether the model has the cluster head (and takes ``num_clusters``).
        ema_momentum: the target encoder's EMA momentum, or None without a momentum target.
    """

    name: str
    model: type[SelfSupervisedModel]
    heads: Mapping[str, Any]
    alpha: float
    fix_pred_lr: bool
    loss_form: Literal["simsiam", "byol"]
    clusters: bool
    ema_momentum: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", MappingProxyType(dict(self.heads)))
        if self.model.method != self.name:
            raise ValueError(f"MethodSpec {self.name!r}: {self.model.__name__}.method is {self.model.method!r}")
        if self.loss_form not in ("simsiam", "byol"):
            raise ValueError(f"MethodSpec {self.name!r}: loss_form must be 'simsiam' or 'byol', got {self.loss_form!r}")
        if not (0.0 <= self.alpha <= 1.0) or (not self.clusters and self.alpha != 0.0):
            raise ValueError(f"MethodSpec {self.name!r}: alpha {self.alpha} must be in [0, 1] and 0 without clusters")

    @property
    def uses_ema(self) -> bool:
        """Whether the model has a momentum target to update after each optimiser step."""
        return self.ema_momentum is not None

    @property
    def defaults(self) -> dict[str, Any]:
        """The model options :func:`~clusiam_fast.models.build_model` fills in (heads, plus ema_momentum)."""
        return {**self.heads, **({"ema_momentum": self.ema_momentum} if self.uses_ema else {})}
