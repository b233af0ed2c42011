"""MLP heads built from a list of small blocks (linear, optional BatchNorm, optional ReLU).

The SimSiam projector, the predictor and the cluster head are each a few
:class:`Block` specs; :func:`mlp` turns specs into an ``nn.Sequential``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

BatchNorm = Literal["none", "affine", "plain"]  # "plain" = BatchNorm1d(affine=False)


@dataclass(frozen=True)
class Block:
    """One layer: Linear(in_dim, out_dim, bias) -> optional BatchNorm1d -> optional ReLU."""

    in_dim: int
    out_dim: int
    bias: bool = True
    bn: BatchNorm = "none"
    relu: bool = False


def mlp(blocks: Sequence[Block]) -> nn.Sequential:
    """An ``nn.Sequential`` of the blocks' layers, flat (Linear, BN, ReLU, Linear, ...)."""
    layers: list[nn.Module] = []
    for block in blocks:
        layers.append(nn.Linear(block.in_dim, block.out_dim, bias=block.bias))
        if block.bn != "none":
            layers.append(nn.BatchNorm1d(block.out_dim, affine=block.bn == "affine"))
        if block.relu:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def projector_blocks(in_dim: int, out_dim: int, hidden_dim: int | None = None, end: str = "bn") -> list[Block]:
    """SimSiam's three-layer projector; ``end="bn"`` finishes with an affine-free BatchNorm.

    When a BatchNorm follows the last linear layer its bias would be cancelled by the
    mean subtraction, so it is left out (the published code keeps it frozen instead:
    same outputs). ``end="linear"`` (Table 5's ablation) ends on a biased linear layer.
    """
    if end not in ("bn", "linear"):
        raise ValueError(f"projector_end must be 'bn' or 'linear', got {end!r}")
    hidden = hidden_dim or in_dim
    return [
        Block(in_dim, hidden, bias=False, bn="affine", relu=True),
        Block(hidden, hidden, bias=False, bn="affine", relu=True),
        Block(hidden, out_dim, bias=end == "linear", bn="plain" if end == "bn" else "none"),
    ]


def predictor_blocks(dim: int, hidden_dim: int, first_bias: bool) -> list[Block]:
    """Bottleneck predictor dim -> hidden -> dim (SimSiam: 512 without first bias; BYOL: 4096 with)."""
    return [Block(dim, hidden_dim, bias=first_bias, bn="affine", relu=True), Block(hidden_dim, dim)]


def cluster_projector_blocks(in_dim: int, hidden_dim: int) -> list[Block]:
    """The cluster head's hidden layer: Linear + BatchNorm + ReLU (its output feeds the assigner)."""
    return [Block(in_dim, hidden_dim, bias=True, bn="affine", relu=True)]
