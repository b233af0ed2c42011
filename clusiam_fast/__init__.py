"""clusiam_fast: CluSiam for histopathology, fast.

The fused cluster loss (C++ / CUDA, with a pure-PyTorch reference), models and
trainer, slide tiling, a DALI data pipeline and MIL evaluation.
"""

from . import reference
from ._extension import fused_available
from .functional import cluster_loss
from .losses import ClusterLoss

__all__ = ["ClusterLoss", "cluster_loss", "fused_available", "reference"]
__version__ = "0.1.0"
