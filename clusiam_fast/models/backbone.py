"""Backbone factory: a torchvision ResNet, randomly initialised, whose pooled output is the representation."""

from __future__ import annotations

from torch import nn
from torchvision import models as tv_models

from ..choices import ARCH_NAMES as ARCHS  # the one table of names


def build_backbone(arch: str = "resnet18", *, zero_init_residual: bool = True) -> tuple[nn.Module, int]:
    """Return ``(resnet, feature_dim)`` with ``resnet.fc = nn.Identity()``.

    Random init only (``weights=None``): nothing is ever downloaded. ``zero_init_residual``
    starts each residual branch at zero, as SimSiam and the published CluSiam code do.
    ``feature_dim`` is 512 for resnet18/34 and 2048 for resnet50 and deeper.
    """
    if arch not in ARCHS:
        raise ValueError(f"build_backbone: unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    net = getattr(tv_models, arch)(weights=None, zero_init_residual=zero_init_residual)
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, feature_dim
