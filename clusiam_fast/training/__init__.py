"""Training: config, loss, lr schedule, checkpoints, logs and the loop behind ``python -m clusiam_fast.train``.

Example::

    from clusiam_fast.training import TrainConfig, train
    result = train(TrainConfig(data="patches/", out="runs/x", epochs=2, batch_size=32, crop_size=64))

The names below are imported on first use, so ``clusiam_fast.training.config`` (and
``python -m clusiam_fast.train --help``) loads without torch.
"""

from importlib import import_module

_LAZY = {
    "CollapseError": ".loop",
    "CollapseWarning": ".collapse",
    "LossTerms": ".objective",
    "NonFiniteLossError": ".loop",
    "OutPathError": ".loop",
    "TrainConfig": ".config",
    "TrainResult": ".loop",
    "TrainStep": ".step",
    "autocast_context": ".step",
    "invariance_loss": ".objective",
    "resolve_amp_dtype": ".step",
    "train": ".loop",
    "training_loss": ".objective",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
