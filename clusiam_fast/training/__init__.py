"""Training: config, loss, lr schedule, checkpoints, logs and the loop behind ``python -m clusiam_fast.train``.

Example::

    from clusiam_fast.training import TrainConfig, train
    result = train(TrainConfig(data="patches/", out="runs/x", epochs=2, batch_size=32, crop_size=64))
"""

from .config import TrainConfig
from .loop import CollapseWarning, NonFiniteLossError, TrainResult, train
from .objective import LossTerms, invariance_loss, training_loss
from .step import TrainStep, autocast_context, resolve_amp_dtype

__all__ = [
    "CollapseWarning",
    "LossTerms",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "autocast_context",
    "invariance_loss",
    "resolve_amp_dtype",
    "train",
    "training_loss",
]
