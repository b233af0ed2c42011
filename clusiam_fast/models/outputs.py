"""Typed forward results of the self-supervised models."""

from __future__ import annotations

from typing import NamedTuple

import torch


class PairOutput(NamedTuple):
    """What ``model(x1, x2)`` returns for the two views of a batch.

    Attributes:
        z1, z2: online projections (N, D); the cluster loss uses them detached.
        p1, p2: predictions (N, D).
        t1, t2: the targets the predictions regress onto, already detached: the
            projections themselves for SimSiam, the momentum encoder's for BYOL.
            The invariance loss pairs ``p1`` with ``t2`` and ``p2`` with ``t1``.
        a1, a2: cluster-assigner logits (N, K), or None for simsiam / byol.
        h1, h2: the online backbone's pooled features (N, F), with gradient, computed
            on the way to z (no extra forward); the trainer's collapse monitors read them.

    A NamedTuple (not a dataclass) so DistributedDataParallel and torch.compile
    see through it.
    """

    z1: torch.Tensor
    z2: torch.Tensor
    p1: torch.Tensor
    p2: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    a1: torch.Tensor | None = None
    a2: torch.Tensor | None = None
    h1: torch.Tensor | None = None
    h2: torch.Tensor | None = None
