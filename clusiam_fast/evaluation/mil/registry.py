"""Name -> MIL head factory."""

from __future__ import annotations

from torch import nn

from ...choices import MIL_MODEL_NAMES
from .abmil import ABMIL
from .dsmil import DSMIL
from .maxpool import MaxPoolMIL

MIL_MODELS = {"maxpool": MaxPoolMIL, "dsmil": DSMIL, "abmil": ABMIL}
DEFAULT_MODELS = MIL_MODEL_NAMES  # the torch-free table (clusiam_fast/choices.py), in its order


def build_mil(name: str, in_dim: int, num_classes: int, **options) -> nn.Module:
    """Build ``maxpool`` (Max-pooling MIL), ``dsmil`` (DSMIL) or ``abmil`` (gated ABMIL) for F = ``in_dim`` features."""
    try:
        cls = MIL_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown MIL model {name!r}; choose from {sorted(MIL_MODELS)}") from None
    return cls(in_dim, num_classes, **options)
