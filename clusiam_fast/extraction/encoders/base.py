"""What every encoder of extraction is: an :class:`Encoder` (features and, with a cluster
assigner, its probabilities), and the check that its weights are finite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    """Backbone features and (when the model has a cluster assigner) its probabilities."""

    def __init__(self, model: nn.Module, *, kind: str, config: dict[str, Any], has_assigner: bool) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.config = config
        self.has_assigner = has_assigner

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.kind != "checkpoint":  # a plain backbone (exported, timm, torchvision): pooled features
            return self.model(x), None
        features = self.model.features(x)
        if not self.has_assigner:
            return features, None
        if hasattr(self.model, "assign") and hasattr(self.model, "projector"):
            logits = self.model.assign(self.model.projector(features))  # one backbone pass
        else:
            logits = self.model.cluster_logits(x)
        return features, torch.softmax(logits.float(), dim=1)


def check_finite_weights(state: dict[str, Any], source: str | Path) -> None:
    """Refuse weights holding NaN or Inf (a diverged run) in one line naming the file and how many."""
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point()}
    bad = [k for k, v in tensors.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(
            f"checkpoint {source}: {len(bad)} of {len(tensors)} weight tensors hold NaN or Inf values "
            f"(e.g. {', '.join(bad[:3])}); the training run diverged there, use an earlier checkpoint"
        )
