"""The CluSiam cluster loss, one room.

- :mod:`.cluster_loss`: the public :func:`cluster_loss`, :class:`ClusterLoss`, argument
  checks and the fused composition (``torch.ops.clusiam.assign_pool`` -> ``centroid_loss``).
- :mod:`.cluster_loss_reference`: the published computation and the one Gumbel sampler.
- :mod:`._registration`: fake kernels (torch.compile) and autograd formulas of the ops.
- :mod:`._distributed`: the all-reduce of per-cluster sums under DDP.
- :mod:`._extension`: loads ``clusiam_fast._C`` (kernels in ``csrc/cpu``, ``csrc/cuda``).
"""

from .cluster_loss import ClusterLoss, cluster_loss, fused_available
from .cluster_loss_reference import sample_gumbel

__all__ = ["ClusterLoss", "cluster_loss", "fused_available", "sample_gumbel"]
