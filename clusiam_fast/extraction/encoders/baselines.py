"""Foundation-model and ImageNet baselines for extraction: timm and torchvision models with local weights.

``load_baseline_encoder("timm:vit_small_patch16_224", "vit.pth")`` (or ``"torchvision:resnet50"``)
returns an :class:`~clusiam_fast.extraction.encoders.base.Encoder` whose features are the model's
pooled output, so a foundation model's features go through the same evaluation as CluSiam's.

- weights come from a local file only (a state_dict ``.pth``/``.pt``/``.bin``, or
  ``.safetensors``), never a download; a ``state_dict``/``model`` entry holding the tensors
  is unwrapped and a ``module.``/``model.``/``backbone.``/``encoder.`` prefix on every key is
  stripped; the classifier's keys are dropped; the rest must match exactly (the error lists
  the missing and unexpected keys). ``random_init=True`` (``--random-init``) instead keeps
  the model's seeded (seed 0) random initialisation, for tests and chance-level baselines.
- timm: ``timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)`` (the
  pooled pre-logits features); input size, crop fraction, interpolation, mean and std come
  from timm's ``resolve_data_config`` (resize to ``floor(size / crop_pct)``, centre-crop to
  ``size``, as timm's evaluation transform does). Foundation models whose weights need extra
  architecture arguments (e.g. ``init_values``, ``dynamic_img_size``) get them via
  ``model_kwargs`` (``--encoder-kwargs JSON``). Hub and folder names (``hf-hub:...``,
  ``local-dir:...``) are refused: they read or download a config elsewhere.
- torchvision: ``torchvision.models.get_model(name, weights=None)`` with its final Linear
  layer (``fc``, ``classifier[-1]``, ``heads.head``, ...) replaced by ``Identity``; ImageNet
  normalisation; patches as read (vision transformers: resized to their fixed ``image_size``).

``encoder.config`` carries ``method`` (``timm:<name>``), ``arch``, ``weights`` (resolved path
or None), ``weights_sha256``, ``mean``/``std``/``norm_origin`` and the default
``resize``/``crop``/``interpolation``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...utils.torch_files import PickleRefusedError, load_torch_file, strip_prefixes
from ..normalisation import IMAGENET_MEAN, IMAGENET_STD
from .base import Encoder, check_finite_weights

LIBRARIES = ("timm", "torchvision")
TIMM_HINT = 'timm is not installed; install it with `pip install ".[encoders]"` (or `pip install timm`)'


def parse_encoder(spec: str) -> tuple[str, str]:
    """``"timm:NAME"`` -> ``("timm", "NAME")``; ``"checkpoint"`` -> ``("checkpoint", "")``."""
    if spec == "checkpoint":
        return "checkpoint", ""
    library, _, name = spec.partition(":")
    if library not in LIBRARIES or not name:
        raise ValueError(
            f"--encoder {spec!r}: give 'checkpoint' (the default), 'timm:<model name>' or 'torchvision:<model name>'"
        )
    if ":" in name:  # timm's hf-hub:/local-dir: names read (or download) a config elsewhere
        raise ValueError(
            f"--encoder {spec!r}: give the architecture name (e.g. timm:vit_large_patch16_224, with --encoder-kwargs "
            "for its options) and the weights file with --weights; hub and folder names are not supported"
        )
    return library, name


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of a local weights file (.safetensors, or a torch state_dict), prefixes stripped.

    A torch file that needs pickle is refused unless ``trust_pickle`` (``--trust-pickle``)."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError(f"--weights {path}: reading .safetensors needs `pip install safetensors`") from error
        try:
            state: Any = load_file(str(path), device="cpu")
        except Exception as error:
            raise ValueError(f"--weights {path}: not a readable safetensors file ({error})") from error
    else:
        try:
            state = load_torch_file(path, trust_pickle=trust_pickle)
        except PickleRefusedError as error:
            raise PickleRefusedError(f"--weights {error}") from None
        except Exception as error:  # truncated file, a pickle with objects, not a torch file
            raise ValueError(
                f"--weights {path}: cannot read it as a state_dict ({type(error).__name__}: {error})"
            ) from error
    for key in ("state_dict", "model"):  # a training checkpoint holding the weights under one key
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"--weights {path}: expected a dict of tensors (a state_dict), got {type(state).__name__}")
    state = strip_prefixes(state)
    check_finite_weights(state, path)
    return state


def load_weights(model: nn.Module, state: dict[str, Tensor], classifiers: tuple[str, ...], source: str) -> list[str]:
    """Load ``state`` strictly except for the removed classifiers' keys (returned)."""
    dropped = [k for k in state if any(k.startswith(c + ".") for c in classifiers)]
    state = {k: v for k, v in state.items() if k not in dropped}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if keys
        ]
        raise ValueError(
            f"--weights {source} do not fit {type(model).__name__}: {'; '.join(parts)}. Check the model name"
            " (and for timm the architecture options, --encoder-kwargs)"
        )
    model.load_state_dict(state, strict=True)
    return dropped


def _unknown(library: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    how = (
        "python -c \"import timm; print(timm.list_models('vit_*'))\""
        if library == "timm"
        else 'python -c "import torchvision; print(torchvision.models.list_models())"'
    )
    near = f" (close: {', '.join(close)})" if close else ""
    return ValueError(f"--encoder {library}:{name}: unknown {library} model{near}; list the names with {how}")


def _timm_model(name: str, model_kwargs: dict[str, Any]) -> tuple[nn.Module, tuple[str, ...], dict[str, Any]]:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError as error:
        raise ImportError(TIMM_HINT) from error
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **model_kwargs)
    except TypeError as error:
        raise ValueError(
            f"--encoder-kwargs {json.dumps(model_kwargs)}: not options of timm:{name} ({error})"
        ) from error
    cfg = resolve_data_config({}, model=model)
    _, height, width = cfg["input_size"]
    if height != width:
        raise ValueError(f"timm:{name} expects {height}x{width} inputs (not square): give --resize and --crop")
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    defaults = {
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "norm_origin": f"timm data config of {name}",
        "resize": math.floor(height / crop_pct),
        "crop": int(height),
        "interpolation": str(cfg.get("interpolation") or "bicubic"),
        "crop_size": int(height),
    }
    classifier = model.pretrained_cfg.get("classifier") or ()  # "head", "fc", ("head", "head_dist"), ...
    return model, (classifier,) if isinstance(classifier, str) else tuple(classifier), defaults


def _torchvision_model(name: str) -> tuple[nn.Module, tuple[str, ...], dict[str, Any]]:
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        raise _unknown("torchvision", name, known)
    model = torchvision.models.get_model(name, weights=None)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"--encoder torchvision:{name}: no Linear classifier to remove; pick a classification model")
    classifier = linears[-1]
    parent, _, child = classifier.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    defaults: dict[str, Any] = {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "norm_origin": f"ImageNet (torchvision:{name})",
    }
    if isinstance(getattr(model, "image_size", None), int):  # vision transformers take one input size
        defaults.update(resize=model.image_size, crop=model.image_size, crop_size=model.image_size)
    return model, (classifier,), defaults


def load_baseline_encoder(
    spec: str,
    weights: str | Path | None,
    *,
    random_init: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> Encoder:
    """An eval-mode :class:`Encoder` for ``timm:NAME`` or ``torchvision:NAME`` with local ``weights``."""
    library, name = parse_encoder(spec)
    if library == "checkpoint":
        raise ValueError(
            "load_baseline_encoder takes 'timm:NAME' or 'torchvision:NAME'; use load_checkpoint_encoder for checkpoints"
        )
    if random_init and weights is not None:
        raise ValueError("give --weights FILE or --random-init, not both")
    if not random_init:
        if weights is None:
            raise ValueError(
                f"--encoder {spec} needs --weights FILE (a local state_dict; nothing is downloaded), "
                "or --random-init for a randomly initialised baseline"
            )
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"--weights {weights}: no such file (give a local weights file; nothing is downloaded)"
            )
    if model_kwargs and library != "timm":
        raise ValueError("--encoder-kwargs applies to timm models only")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # --random-init: the same random model every run
        if library == "timm":
            model, classifier, config = _timm_model(name, dict(model_kwargs or {}))
        else:
            model, classifier, config = _torchvision_model(name)
    config.update(method=spec, arch=name, weights=None, weights_sha256="", dropped_keys=[], random_init=random_init)
    if weights is not None:
        config["dropped_keys"] = load_weights(model, read_state_dict(weights, trust_pickle), classifier, str(weights))
        config.update(weights=str(weights.resolve()), weights_sha256=file_digest(weights))
    if model_kwargs:
        config["model_kwargs"] = dict(model_kwargs)
    return Encoder(model, kind=library, config=config, has_assigner=False).eval()
