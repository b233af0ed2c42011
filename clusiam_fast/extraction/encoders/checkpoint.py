"""Load what extraction runs: a trainer checkpoint or an exported torchvision ResNet.

:func:`load_checkpoint_encoder` returns an :class:`Encoder` whose forward gives
``(features (N, F), assigner probabilities (N, K) or None)``.

- trainer checkpoint (a dict with ``model`` and ``config``): loaded with
  ``clusiam_fast.models.load_checkpoint``; features are ``model.features(x)``
  (the backbone output) and, for the cluster methods, probabilities are
  ``softmax(cluster logits)``, computed from the same backbone pass
  (``model.assign(model.projector(features))`` = ``model.cluster_logits(x)``).
  The checkpoint's ``norm_stats`` go into ``encoder.config["norm_stats"]``.
- exported backbone (``--export-backbone``, a plain torchvision ResNet state_dict
  without ``fc``): the architecture (resnet18/34/50/101/152) is read off the keys.
- timm and torchvision models with local weights (``kind`` "timm"/"torchvision"):
  :mod:`clusiam_fast.extraction.encoders.baselines`; :func:`clusiam_fast.extraction.encoders.load_encoder`
  picks between the two.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ...utils.torch_files import PickleRefusedError, load_torch_file, strip_prefixes
from .base import Encoder, check_finite_weights

_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def resnet_from_state_dict(state: dict[str, Tensor], source: str = "state_dict") -> tuple[nn.Module, str]:
    """Build the torchvision ResNet matching ``state`` (fc = Identity) and load it strictly."""
    import torchvision

    state = strip_prefixes(state)
    blocks = tuple(
        len({int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in range(1, 5)
    )
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    arch = _RESNETS.get((blocks, bottleneck))
    if arch is None or "conv1.weight" not in state:
        raise ValueError(
            f"{source} is not a torchvision ResNet state_dict (layer blocks {blocks}, bottleneck {bottleneck}); "
            "pass a trainer checkpoint or a file written by `clusiam_fast.train --export-backbone`"
        )
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: {arch} weights do not match (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model, arch


def _load_any(path: Path, trust_pickle: bool = False, map_location: str = "cpu") -> Any:
    try:
        return load_torch_file(path, trust_pickle=trust_pickle, map_location=map_location)
    except PickleRefusedError as error:
        raise PickleRefusedError(f"checkpoint {error}") from None
    except Exception as error:  # truncated file, not a torch file
        raise ValueError(f"cannot read checkpoint {path} ({type(error).__name__}: {error})") from error


def load_checkpoint_encoder(path: str | Path, map_location: str = "cpu", *, trust_pickle: bool = False) -> Encoder:
    """Load a trainer checkpoint or an exported ResNet backbone as an eval-mode :class:`Encoder` (one read).

    Weights with NaN or Inf values are refused (:func:`check_finite_weights`); a file that needs
    pickle is refused unless ``trust_pickle`` (:func:`clusiam_fast.utils.torch_files.load_torch_file`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    obj = _load_any(path, trust_pickle, map_location)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        check_finite_weights(obj["model"], path)
    elif isinstance(obj, dict):
        check_finite_weights(obj, path)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        from ...models import CLUSTER_METHODS
        from ...models.weights import model_from_checkpoint

        model, config = model_from_checkpoint(obj)
        if isinstance(obj.get("norm_stats"), dict):
            config.setdefault("norm_stats", obj["norm_stats"])
        has_assigner = bool(getattr(model, "has_clusters", config.get("method") in CLUSTER_METHODS))
        return Encoder(model, kind="checkpoint", config=config, has_assigner=has_assigner).eval()
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        model, arch = resnet_from_state_dict(obj, str(path))
        return Encoder(model, kind="backbone", config={"method": "backbone", "arch": arch}, has_assigner=False).eval()
    raise ValueError(
        f"{path} is neither a clusiam_fast trainer checkpoint (dict with 'model' and 'config') nor a ResNet state_dict"
    )
