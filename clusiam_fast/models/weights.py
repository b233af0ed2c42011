"""Reading checkpoints and exporting the backbone as a plain torchvision state_dict.

A checkpoint is ``torch.save`` of a dict (read with ``weights_only=True``) with at least ``{"model": state_dict,
"config": dict(method=..., arch=..., num_clusters=..., ...), "epoch": int}``; the
trainer adds optimiser, scaler, RNG and history entries (see
:mod:`clusiam_fast.training.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.atomic import atomic_torch_save
from ..utils.torch_files import PickleRefusedError, load_torch_file, strip_prefixes
from .base import SelfSupervisedModel
from .factory import build_model, model_config, unwrap


def read_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, trust_pickle: bool = False
) -> dict[str, Any]:
    """Load a checkpoint (``weights_only=True``; pickle only with ``trust_pickle``) with clear errors for a
    missing, foreign or pickle-bearing file (:class:`~clusiam_fast.utils.torch_files.PickleRefusedError`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = load_torch_file(path, trust_pickle=trust_pickle, map_location=map_location)
    except PickleRefusedError as error:
        raise PickleRefusedError(f"checkpoint {error}") from None
    except Exception as error:  # truncated / not a torch file
        first = (str(error).strip().splitlines() or [""])[0]  # torch's C++ errors append a stack trace
        raise ValueError(
            f"checkpoint {path} could not be read ({type(error).__name__}: {first}): it is damaged or not a checkpoint"
        ) from error
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(
            f"checkpoint {path} is not a clusiam_fast checkpoint (expected a dict with 'model' and 'config'); "
            "for a bare backbone state_dict load it into torchvision.models.resnet18() directly"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[SelfSupervisedModel, dict[str, Any]]:
    """The model (eval mode) and config of a checkpoint already read (:func:`read_checkpoint`)."""
    config = dict(ckpt["config"])
    model = build_model(**model_config(config))
    model.load_state_dict(strip_prefixes(ckpt["model"]))  # a trainer model's own keys never share one
    return model.eval(), config


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, trust_pickle: bool = False
) -> tuple[SelfSupervisedModel, dict[str, Any]]:
    """Rebuild the model saved in a checkpoint; returns ``(model, config)`` (model in eval mode).

    Example::

        model, config = load_checkpoint("runs/demo/checkpoint.pt")
        feats = model.features(images)
    """
    return model_from_checkpoint(read_checkpoint(path, map_location, trust_pickle=trust_pickle))


def backbone_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights as a plain torchvision ResNet state_dict (no ``fc.*`` keys)."""
    state = unwrap(model).backbone.state_dict()
    return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith("fc.")}


def export_backbone(model_or_checkpoint: nn.Module | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the backbone state_dict (atomically) for ``torchvision.models.<arch>().load_state_dict(sd, strict=False)``."""
    if isinstance(model_or_checkpoint, nn.Module):
        model = model_or_checkpoint
    else:
        model, _ = load_checkpoint(model_or_checkpoint)
    path = Path(path)
    atomic_torch_save(backbone_state_dict(model), path)
    return path
