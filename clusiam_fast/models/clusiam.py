"""CluSiam: SimSiam plus a cluster head trained with the cluster loss.

Wu et al., "Improving Representation Learning for Histopathologic Images with Cluster
Constraints", ICCV 2023; published code: ``Cluster_SimSiam`` and ``main_clusiam.py``.
"""

from __future__ import annotations

from .base import MethodSpec
from .simsiam import SimSiam


class CluSiam(SimSiam):
    """SimSiam with the cluster projector and assigner (``num_clusters`` outputs).

    Example::

        model = CluSiam(arch="resnet18", out_dim=2048, proj_hidden=None, pred_hidden=512,
                        pred_first_bias=False, projector_end="bn", num_clusters=100, cluster_hidden=512)
        out = model(x1, x2)
        loss = model.invariance_loss(out)  # SimSiam's: -(cos(p1, t2) + cos(p2, t1))
        loss = (1 - alpha) * loss + alpha * clusiam_fast.cluster_loss(
            torch.cat([out.z1, out.z2]).detach(), torch.cat([out.a1, out.a2]))
    """

    method = "clusiam"


METHOD = MethodSpec.of(CluSiam)  # defaults: the "clusiam" row of clusiam_fast/choices.py
"""CluSiam as in the paper and the published ``main_clusiam.py``.

Heads: ``Cluster_SimSiam(out_dim=2048, hidden_dim=512)``: 2048-d projections, a 512-d predictor without
first bias, and the cluster head ``nn.Linear(out_dim, hidden_dim)`` + BatchNorm + ReLU -> assigner.
alpha: ``--alpha default=0.5`` (the paper's value). fix_pred_lr: on (``--fix_pred_lr``, predictor group
``'fix_lr': True``). Loss: the SimSiam form, ``-(criterion(p[0], z[1].detach()).mean() + ...) * (1 - args.alpha)``.
"""
