"""What a patch becomes before the encoder: resized, centre-cropped and normalised.

:func:`resolve_normalisation` finds the mean and std (command line, the encoder's config,
``norm_stats.json`` beside the checkpoint, else ImageNet's), :func:`check_normalisation`
refuses statistics that cannot be right for [0, 1] pixels, :func:`build_transform` is the
patch transform every extraction worker rebuilds.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_normalisation(
    cfg: dict, checkpoint: Path | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float], str]:
    """(mean, std, where they came from), in the order of :mod:`clusiam_fast.extract`'s docstring.

    ``cfg`` is the encoder's config; timm/torchvision encoders carry their own (``norm_origin`` says whose)."""
    if mean is not None and std is not None:
        return list(mean), list(std), "command line"
    for m_key, s_key in (("mean", "std"), ("norm_mean", "norm_std")):
        if cfg.get(m_key) is not None and cfg.get(s_key) is not None:
            return (
                [float(v) for v in cfg[m_key]],
                [float(v) for v in cfg[s_key]],
                cfg.get("norm_origin") or f"checkpoint config ({m_key}/{s_key})",
            )
    stats = cfg.get("norm_stats")
    if isinstance(stats, dict) and "mean" in stats and "std" in stats:
        return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]], "checkpoint config (norm_stats)"
    for folder in (checkpoint.parent, checkpoint.parent.parent) if checkpoint is not None else ():
        path = folder / "norm_stats.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return [float(v) for v in data["mean"]], [float(v) for v in data["std"]], str(path)
    warnings.warn(
        f"no normalisation statistics found for {checkpoint} (no --mean/--std, none in its config, no norm_stats.json beside it); using ImageNet's",
        stacklevel=2,
    )
    return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (fallback)"


def check_normalisation(mean: Sequence[float], std: Sequence[float], origin: str) -> None:
    """Refuse statistics that cannot be right for [0, 1] pixels, saying what is wrong (and where they came from)."""
    for name, values in (("mean", mean), ("std", std)):
        values = list(values)
        if len(values) != 3:
            raise ValueError(f"normalisation {name} from {origin} needs 3 values (R G B), got {len(values)}: {values}")
        bad = [v for v in values if not isinstance(v, (int, float)) or not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"normalisation {name} from {origin} has non-finite values: {values}")
        if any(float(v) > 1 for v in values):
            raise ValueError(
                f"normalisation {name} from {origin} is {values}: values > 1 suggest 0-255 pixel units; "
                f"give them for pixels in [0, 1] (divided by 255: {[round(float(v) / 255, 4) for v in values]})"
            )
    if any(float(v) <= 0 for v in std):
        raise ValueError(f"normalisation std from {origin} is {list(std)}: every std must be > 0")
    if any(float(v) < 0 for v in mean):
        raise ValueError(f"normalisation mean from {origin} is {list(mean)}: a mean of [0, 1] pixels lies in [0, 1]")


def build_transform(
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    crop: int | None = None,
    interpolation: str = "bilinear",
):
    """PIL RGB -> normalised tensor: optional resize (shorter side), optional centre crop."""
    from torchvision import transforms as T

    steps = []
    if resize:
        steps.append(T.Resize(resize, interpolation=T.InterpolationMode(interpolation)))
    if crop:
        steps.append(T.CenterCrop(crop))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
