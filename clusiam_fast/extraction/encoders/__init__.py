"""What extraction encodes patches with, behind one dispatcher, :func:`load_encoder`.

- :mod:`.base`: :class:`Encoder` (``forward(x) -> (features, probabilities or None)``), the finite-weights check.
- :mod:`.checkpoint`: a trainer checkpoint or an exported torchvision ResNet (``--encoder checkpoint``).
- :mod:`.baselines`: a timm / torchvision model with local weights (``--encoder timm:NAME``).

The key prefixes stripped off loaded weights (``module.``, ...) are one list,
:data:`clusiam_fast.utils.torch_files.WRAPPER_PREFIXES`, shared with ``models.load_checkpoint``.
"""

from __future__ import annotations

from pathlib import Path

from .base import Encoder, check_finite_weights
from .baselines import load_baseline_encoder, parse_encoder
from .checkpoint import load_checkpoint_encoder

__all__ = [
    "Encoder",
    "check_finite_weights",
    "load_baseline_encoder",
    "load_checkpoint_encoder",
    "load_encoder",
    "parse_encoder",
]


def load_encoder(
    checkpoint: str | Path | None,
    encoder: str = "checkpoint",
    weights: str | Path | None = None,
    random_init: bool = False,
    encoder_kwargs: dict | None = None,
    trust_pickle: bool = False,
) -> Encoder:
    """The trainer checkpoint / exported backbone, or a ``timm:NAME`` / ``torchvision:NAME`` baseline.

    Files that need pickle to load are refused unless ``trust_pickle`` (``--trust-pickle``)."""
    if parse_encoder(encoder)[0] == "checkpoint":
        if checkpoint is None:
            raise ValueError("give a CHECKPOINT, or --encoder timm:NAME / torchvision:NAME with --weights FILE")
        if weights is not None or random_init or encoder_kwargs:
            raise ValueError("--weights, --random-init and --encoder-kwargs go with --encoder timm:/torchvision:")
        return load_checkpoint_encoder(checkpoint, trust_pickle=trust_pickle)
    if checkpoint is not None:
        raise ValueError(f"--encoder {encoder} takes no CHECKPOINT (its weights come from --weights)")
    return load_baseline_encoder(
        encoder, weights, random_init=random_init, model_kwargs=encoder_kwargs, trust_pickle=trust_pickle
    )
