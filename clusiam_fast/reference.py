"""``clusiam_fast.reference.cluster_loss``: the published computation (see :mod:`clusiam_fast.ops.cluster_loss_reference`)."""

from .ops.cluster_loss_reference import cluster_loss, sample_gumbel

__all__ = ["cluster_loss", "sample_gumbel"]
