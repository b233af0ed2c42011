"""CluBYOL: BYOL plus a cluster head on the online projections, trained with the cluster loss.

The BYOL variant of Wu et al., ICCV 2023; published code: ``Cluster_BYOL`` and ``main_clubyol.py``.
"""

from __future__ import annotations

from .base import MethodSpec
from .byol import BYOL


class CluBYOL(BYOL):
    """BYOL with the cluster projector and assigner (``num_clusters`` outputs) on the online projections.

    Its loss is BYOL's invariance form plus the cluster loss; its target follows by EMA after each step.
    """

    method = "clubyol"


METHOD = MethodSpec.of(CluBYOL)  # defaults: the "clubyol" row of clusiam_fast/choices.py
"""CluBYOL as in the published ``main_clubyol.py``.

Heads: ``Cluster_BYOL(out_dim=256, hidden_dim=4096)``: 256-d projections, a 4096-d predictor with first bias,
and a cluster head as wide as the projection (``nn.Linear(out_dim, out_dim)`` + BatchNorm + ReLU -> assigner).
alpha: ``--alpha default=0.9``. fix_pred_lr: off (``optim_params = model.parameters()``). Target EMA:
``self.momentum = 0.99``, ``model.momentum_update()`` after ``optimizer.step()``. Loss: the BYOL form,
``(1 - cos(p1, t2.detach()).mean() + 1 - cos(p2, t1.detach()).mean()) * (1 - args.alpha)``.
"""
