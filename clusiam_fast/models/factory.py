"""``build_model`` and the method registry, built from the ``METHOD`` spec of each method file."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torch import nn

from ..choices import METHOD_NAMES
from .base import MethodSpec, SelfSupervisedModel

# The registry, in the order of --method's choices: for each row of the choices table, the METHOD
# spec of the method file of that name (models/<name>.py).
METHOD_SPECS: dict[str, MethodSpec] = {name: import_module(f"{__package__}.{name}").METHOD for name in METHOD_NAMES}
METHODS = tuple(METHOD_SPECS)
# Default model options per method (head sizes, plus ema_momentum for momentum methods).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {name: spec.defaults for name, spec in METHOD_SPECS.items()}
CLUSTER_METHODS = tuple(name for name, spec in METHOD_SPECS.items() if spec.clusters)
MOMENTUM_METHODS = tuple(name for name, spec in METHOD_SPECS.items() if spec.uses_ema)
# Keys of a checkpoint's config that define the architecture (everything build_model takes).
MODEL_KEYS = (
    "method",
    "arch",
    "num_clusters",
    "projector_end",
    "zero_init_residual",
    *sorted({k for d in METHOD_DEFAULTS.values() for k in d}),
)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of method ``name``; ValueError naming the choices for an unknown one."""
    try:
        return METHOD_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


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
        The model, an instance of the method's ``MethodSpec.model`` (``model.method == method``);
        ``model.backbone`` is a torchvision ResNet with ``fc = nn.Identity()``.

    Example::

        model = build_model("clusiam", num_clusters=100)
        out = model(view1, view2)           # PairOutput(z1, z2, p1, p2, t1, t2, a1, a2, h1, h2)
        feats = model.features(images)      # (N, 512)
    """
    try:
        spec = method_spec(method)
    except ValueError as error:
        raise ValueError(f"build_model: {error}") from None
    opts = spec.defaults
    opts.update({k: v for k, v in options.items() if k in opts and v is not None})
    clusters = num_clusters if spec.clusters else None
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
    if spec.uses_ema:
        common["momentum"] = opts["ema_momentum"]
    return spec.model(**common)


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
