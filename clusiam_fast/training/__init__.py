"""Training: config, loss, lr schedule, checkpoints, logs and the loop behind ``python -m clusiam_fast.train``.

Example::

    from clusiam_fast.training import TrainConfig, train
    result = train(TrainConfig(data="patches/", out="runs/x", epochs=2, batch_size=32, crop_size=64))

The names below are imported on first use, so ``clusiam_fast.training.config`` (and
``python -m clusiam_fast.train --help``) loads without torch.
"""

from ..utils.lazy import lazy_attributes

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
    "resolve_amp_dtype": ".step",
    "train": ".loop",
    "training_loss": ".objective",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
