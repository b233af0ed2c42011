"""What every model shares: a backbone, a projector, a predictor and an optional cluster head.

Also the method interface the trainer calls (:meth:`SelfSupervisedModel.invariance_loss`,
:meth:`~SelfSupervisedModel.after_optimizer_step`, :meth:`~SelfSupervisedModel.optimizer_groups`) and
:class:`MethodSpec`, the defaults each method file reads from its row of ``clusiam_fast/choices.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import HEAD_KEYS, METHOD_TABLE
from .backbone import build_backbone
from .heads import cluster_projector_blocks, mlp, predictor_blocks, projector_blocks
from .outputs import PairOutput


def cross_view_cosines(out: PairOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(p1, t2) and cos(p2, t1), each averaged over the batch, in float32, the targets detached."""
    c12 = F.cosine_similarity(out.p1.float(), out.t2.detach().float(), dim=-1).mean()
    c21 = F.cosine_similarity(out.p2.float(), out.t1.detach().float(), dim=-1).mean()
    return c12, c21


def reduce_pair(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """The two symmetric terms summed ("sum", the published scale) or averaged ("mean": x 0.5)."""
    return loss * 0.5 if reduction == "mean" else loss


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

    # The method interface: the trainer calls these and never looks at a method's name.

    def invariance_loss(self, out: PairOutput, reduction: str = "sum") -> torch.Tensor:
        """This method's symmetric invariance loss between predictions and the other view's targets (float32)."""
        raise NotImplementedError(f"{type(self).__name__} defines no invariance_loss")

    def after_optimizer_step(self) -> None:
        """Called after each ``optimizer.step()``; a momentum method updates its target here."""

    def optimizer_groups(self, fix_pred_lr: bool) -> list[dict[str, Any]]:
        """SGD parameter groups (encoder, predictor, cluster) with this method's lr policy: under
        ``fix_pred_lr`` the predictor group is marked ``fix_lr`` (it keeps the base lr, no cosine decay)."""
        return [
            {"params": params, "name": name, "fix_lr": name == "predictor" and fix_pred_lr}
            for name, params in self.param_groups().items()
            if params
        ]

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
    """One method's model class and defaults; each method file defines one as ``METHOD = MethodSpec.of(Model)``.

    Fields (the method's row of ``clusiam_fast.choices.METHOD_TABLE``):
        name: the ``--method`` name, equal to ``model.method``.
        model: the :class:`SelfSupervisedModel` subclass :func:`~clusiam_fast.models.build_model` builds.
        heads: default head sizes (out_dim, proj_hidden, pred_hidden, pred_first_bias, cluster_hidden);
            proj_hidden None = the backbone's feature size.
        alpha: default weight of the cluster loss in ``(1 - alpha) * L_inv + alpha * L_cluster``.
        fix_pred_lr: default of --fix-pred-lr (the predictor keeps the base lr, no cosine decay).
        clusters: whether the model has the cluster head (and takes ``num_clusters``).
        ema_momentum: the target encoder's EMA momentum, or None without a momentum target.
    """

    name: str
    model: type[SelfSupervisedModel]
    heads: Mapping[str, Any]
    alpha: float
    fix_pred_lr: bool
    clusters: bool
    ema_momentum: float | None = None

    @classmethod
    def of(cls, model: type[SelfSupervisedModel]) -> MethodSpec:
        """The spec of ``model``, its defaults read from the row ``model.method`` of the choices table."""
        if model.method not in METHOD_TABLE:
            raise ValueError(
                f"MethodSpec.of({model.__name__}): clusiam_fast/choices.py METHOD_TABLE has no row "
                f"{model.method!r}; add the method's defaults there"
            )
        row = METHOD_TABLE[model.method]
        return cls(
            name=model.method,
            model=model,
            heads={key: row[key] for key in HEAD_KEYS},
            alpha=row["alpha"],
            fix_pred_lr=row["fix_pred_lr"],
            clusters=row["clusters"],
            ema_momentum=row["ema_momentum"],
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", MappingProxyType(dict(self.heads)))
        if self.model.method != self.name:
            raise ValueError(f"MethodSpec {self.name!r}: {self.model.__name__}.method is {self.model.method!r}")
        if self.model.invariance_loss is SelfSupervisedModel.invariance_loss:
            raise ValueError(f"MethodSpec {self.name!r}: {self.model.__name__} defines no invariance_loss")
        if not (0.0 <= self.alpha <= 1.0) or (not self.clusters and self.alpha != 0.0):
            raise ValueError(f"MethodSpec {self.name!r}: alpha {self.alpha} must be in [0, 1] and 0 without clusters")

    @property
    def uses_ema(self) -> bool:
        """Whether the model has a momentum target (updated in ``after_optimizer_step``)."""
        return self.ema_momentum is not None

    @property
    def defaults(self) -> dict[str, Any]:
        """The model options :func:`~clusiam_fast.models.build_model` fills in (heads, plus ema_momentum)."""
        return {**self.heads, **({"ema_momentum": self.ema_momentum} if self.uses_ema else {})}
