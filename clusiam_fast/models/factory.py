"""``build_model`` and the per-method defaults of the paper and its published code."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import SelfSupervisedModel
from .byol import BYOL
from .siamese import SimSiam

# Head sizes per method. clusiam/simsiam: the published Cluster_SimSiam (2048-d
# projections, 512-d bottleneck predictor without first bias, 512-d cluster head).
# clubyol/byol: the published Cluster_BYOL (256-d projections, 4096-d predictor with
# bias, cluster head as wide as the projection, target EMA momentum 0.99).
# proj_hidden None = the backbone's feature size (512 for resnet18).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "clusiam": dict(out_dim=2048, proj_hidden=None, pred_hidden=512, pred_first_bias=False, cluster_hidden=512),
    "simsiam": dict(out_dim=2048, proj_hidden=None, pred_hidden=512, pred_first_bias=False, cluster_hidden=512),
    "clubyol": dict(out_dim=256, proj_hidden=None, pred_hidden=4096, pred_first_bias=True, cluster_hidden=256, ema_momentum=0.99),
    "byol": dict(out_dim=256, proj_hidden=None, pred_hidden=4096, pred_first_bias=True, cluster_hidden=256, ema_momentum=0.99),
}
METHODS = tuple(METHOD_DEFAULTS)
CLUSTER_METHODS = ("clusiam", "clubyol")
MOMENTUM_METHODS = ("clubyol", "byol")
# Keys of a checkpoint's config that define the architecture (everything build_model takes).
MODEL_KEYS = ("method", "arch", "num_clusters", "projector_end", "zero_init_residual", *sorted(
    {k for d in METHOD_DEFAULTS.values() for k in d}
))


def build_model(
    method: str = "clusiam", arch: str = "resnet18", num_clusters: int = 100, **options: Any
) -> SelfSupervisedModel:
    """Build a randomly initialised self-supervised model.

    Args:
        method: "clusiam" (default), "clubyol", "simsiam" or "byol".
        arch: torchvision ResNet name ("resnet18", "resnet34", "resnet50", ...).
        num_clusters: K, the cluster assigner's outputs (ignored by simsiam / byol).
        **options: overrides of :data:`METHOD_DEFAULTS` (out_dim, proj_hidden, pred_hidden,
            pred_first_bias, cluster_hidden, ema_momentum) plus projector_end ("bn" or
            "linear") and zero_init_residual. Unknown keys, or None values, are ignored
            so that a whole training config can be passed through.

    Returns:
        The model; ``model.backbone`` is a torchvision ResNet with ``fc = nn.Identity()``.

    Example::

        model = build_model("clusiam", num_clusters=100)
        out = model(view1, view2)           # PairOutput(z1, z2, p1, p2, t1, t2, a1, a2)
        feats = model.features(images)      # (N, 512)
    """
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"build_model: unknown method {method!r}; choose one of {', '.join(METHODS)}")
    opts = dict(METHOD_DEFAULTS[method])
    opts.update({k: v for k, v in options.items() if k in opts and v is not None})
    clusters = num_clusters if method in CLUSTER_METHODS else None
    if clusters is not None and (not isinstance(clusters, int) or clusters < 1):
        raise ValueError(f"build_model: num_clusters must be a positive int, got {num_clusters!r}")
    common = dict(
        arch=arch,
        out_dim=opts["out_dim"],
        proj_hidden=opts["proj_hidden"],
        pred_hidden=opts["pred_hidden"],
        pred_first_bias=opts["pred_first_bias"],
        projector_end=options.get("projector_end") or "bn",
        num_clusters=clusters,
        cluster_hidden=opts["cluster_hidden"],
        zero_init_residual=options.get("zero_init_residual", True) is not False,
    )
    model = BYOL(momentum=opts["ema_momentum"], **common) if method in MOMENTUM_METHODS else SimSiam(**common)
    model.method = method
    return model


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The architecture-defining subset of a (training) config dict."""
    return {k: config[k] for k in MODEL_KEYS if k in config}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
