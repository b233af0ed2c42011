"""Per-epoch monitors kept on the device (no host sync per step).

- loss terms (total, invariance, cluster), averaged over the epoch and over a
  window of recent steps for the progress bar and the step log;
- active clusters: how many of the K clusters received at least one sample this
  epoch, by argmax of the logits and by argmax with Gumbel noise (what the loss used);
- collapse monitors (``log.csv`` columns):

  ``backbone_std``
      std over the batch of the L2-normalised *backbone* features, averaged over
      dimensions, times sqrt(dim) (SimSiam paper, Fig. 2), averaged over the epoch's
      steps. 0 when every image gets the same features; a random ResNet-18 on PCam
      patches reads 0.55-0.8.
  ``backbone_rankme``
      RankMe (Garrido et al., ICML 2023): exp of the entropy of the normalised singular
      values ``p = s / sum(s)`` of the backbone features of the last ``window`` images
      (view 1) of the epoch, kept in a ring buffer on the device; one SVD per epoch
      (and per partial-epoch row). 1 at collapse, up to min(window, dim).
  ``projection_std``
      the same std on the projections z. The projector ends in an affine-free
      BatchNorm (``--projector-end bn``), which rescales any non-constant batch to unit
      variance: this reads about 1 unless z is exactly constant, so it cannot show a
      backbone collapse. Kept for comparison with the SimSiam paper.
  ``assigner_entropy``
      entropy of the histogram of the assigner's argmax over the epoch, divided by
      log K: 1 when the K clusters are used equally, 0 when every image goes to one.
      The argmax histogram (not the mean softmax) because a collapsed assigner with
      constant logits has a mean softmax close to uniform but a single argmax.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..models.outputs import PairOutput
from .ddp import DistContext
from .objective import LossTerms

TERMS = ("loss", "inv_loss", "cluster_loss", "projection_std", "backbone_std")
_STEPS = len(TERMS)  # index of the step count in EpochMeter.sums
RANKME_EPS = 1e-7  # as in the RankMe paper


def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """std(normalise(z), over the batch).mean() * sqrt(D), in float32."""
    zn = F.normalize(z.detach().float(), dim=1)
    return zn.std(dim=0).mean() * math.sqrt(z.shape[1])


def rankme(features: torch.Tensor, eps: float = RANKME_EPS) -> torch.Tensor:
    """exp(entropy(s / sum(s) + eps)) of the singular values s of ``features`` (N, D), float32, on its device."""
    s = torch.linalg.svdvals(features.detach().float())
    p = s / s.sum().clamp_min(torch.finfo(torch.float32).tiny) + eps
    return torch.exp(-(p * p.log()).sum())


def usage_entropy(counts: torch.Tensor) -> float:
    """Entropy of the histogram ``counts`` (K,) divided by log K: 1 uniform, 0 one cluster (1.0 for K = 1)."""
    k = counts.numel()
    total = float(counts.sum())
    if k < 2 or total <= 0:
        return 1.0 if k == 1 else float("nan")
    p = counts.double() / total
    h = -(p[p > 0] * p[p > 0].log()).sum().item()
    return h / math.log(k)


class StepMonitors(NamedTuple):
    """What one optimiser step hands to :class:`EpochMeter` besides the loss terms (all on the device)."""

    projection_std: torch.Tensor  # 0-dim
    backbone_std: torch.Tensor  # 0-dim; NaN for a model whose output has no backbone features
    features: torch.Tensor | None  # (N, F) detached backbone features of view 1, for the RankMe window


def step_monitors(out: PairOutput) -> StepMonitors:
    """The collapse monitors of one forward, from the tensors it already computed (no extra forward)."""
    h = getattr(out, "h1", None)
    if h is None:
        return StepMonitors(collapse_std(out.z1), out.z1.new_full((), float("nan"), dtype=torch.float32), None)
    return StepMonitors(collapse_std(out.z1), collapse_std(h), h.detach())


class FeatureWindow:
    """Ring buffer of the last ``size`` feature rows (float32, on ``device``); pushes never sync with the host."""

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.buffer = torch.zeros(size, dim, dtype=torch.float32, device=device)
        self.pos = self.filled = 0

    def reset(self) -> None:
        self.pos = self.filled = 0

    def push(self, rows: torch.Tensor) -> None:
        size, n = self.buffer.shape[0], rows.shape[0]
        rows = rows.detach().to(self.buffer.dtype)
        if n >= size:
            self.buffer.copy_(rows[-size:])
            self.pos, self.filled = 0, size
            return
        first = min(n, size - self.pos)
        self.buffer[self.pos : self.pos + first] = rows[:first]
        if n > first:
            self.buffer[: n - first] = rows[first:]
        self.pos = (self.pos + n) % size
        self.filled = min(self.filled + n, size)

    def rankme(self) -> torch.Tensor | None:
        """RankMe of the rows held (fewer than ``size`` early in an epoch), or None when empty."""
        return rankme(self.buffer[: self.filled]) if self.filled else None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.buffer[: self.filled].cpu(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        rows, size = state["rows"], self.buffer.shape[0]
        self.pos = int(state["pos"]) if rows.shape[0] <= size else 0  # a resume with another --rankme-window
        rows = rows[:size]
        self.filled, self.pos = rows.shape[0], self.pos % size
        self.buffer[: self.filled].copy_(rows)


class EpochMeter:
    """Accumulates one epoch's terms, window sums, cluster histograms and feature window on ``device``."""

    def __init__(
        self, num_clusters: int | None, device: torch.device, feature_dim: int | None = None, window: int = 2048
    ) -> None:
        self.num_clusters, self.device = num_clusters, device
        self.features = FeatureWindow(window, feature_dim, device) if feature_dim else None
        self.reset()

    def reset(self) -> None:
        dev = self.device
        self.sums = torch.zeros(_STEPS + 1, dtype=torch.float64, device=dev)  # + step count
        self.window = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, inv, cluster, count
        k = self.num_clusters or 0
        self.hist = torch.zeros(k, dtype=torch.float64, device=dev)
        self.hist_noisy = torch.zeros(k, dtype=torch.float64, device=dev)
        if self.features is not None:
            self.features.reset()
        self.images = 0
        self.skipped = 0  # unreadable images replaced this epoch (this rank)

    def update(self, terms: LossTerms, monitors: StepMonitors, images: int) -> None:
        vals = torch.stack(
            [terms.total, terms.invariance, terms.cluster, monitors.projection_std, monitors.backbone_std]
        )
        vals = vals.detach().double()
        self.sums[:_STEPS] += vals
        self.sums[_STEPS] += 1
        self.window[:3] += vals[:3]
        self.window[3] += 1
        self.images += images
        if self.features is not None and monitors.features is not None:
            self.features.push(monitors.features)
        if self.num_clusters and terms.assign is not None:
            ones = torch.ones(terms.assign.shape[0], dtype=torch.float64, device=self.device)
            self.hist.index_add_(0, terms.assign, ones)
            self.hist_noisy.index_add_(0, terms.assign_noisy, ones)

    def pop_window(self, ctx: DistContext, stop: bool) -> tuple[dict[str, float], bool, bool]:
        """Mean terms over the recent steps of all ranks, whether any rank asked to stop,
        and whether the epoch's loss and projection sums so far are finite. One collective, one host sync."""
        packed = torch.cat([self.window, self.sums[:4], self.window.new_tensor([float(stop)])])
        packed = ctx.all_reduce_sum(packed).cpu()
        self.window.zero_()
        count = max(packed[3].item(), 1.0)
        means = {name: packed[i].item() / count for i, name in enumerate(TERMS[:3])}
        finite = bool(torch.isfinite(packed[4:8]).all())
        return means, bool(packed[8] > 0), finite

    def summary(self, ctx: DistContext) -> dict[str, float]:
        """The epoch's (so far) means over all ranks, active clusters and the collapse monitors.

        Collective: one SVD of this rank's feature window; RankMe is averaged over the ranks.
        """
        rank = self.features.rankme() if self.features is not None else None
        rank_part = (
            self.sums.new_tensor([0.0, 0.0])
            if rank is None
            else torch.stack([rank.double(), rank.new_ones((), dtype=torch.float64)])
        )
        packed = ctx.all_reduce_sum(torch.cat([self.sums, rank_part, self.hist, self.hist_noisy])).cpu()
        count = max(packed[_STEPS].item(), 1.0)
        row: dict[str, Any] = {name: packed[i].item() / count for i, name in enumerate(TERMS)}
        ranks = packed[_STEPS + 2].item()
        row["backbone_rankme"] = packed[_STEPS + 1].item() / ranks if ranks else None
        k, base = self.num_clusters or 0, _STEPS + 3
        if k:
            hist = packed[base : base + k]
            row["active_clusters"] = int((hist > 0).sum())
            row["active_clusters_gumbel"] = int((packed[base + k :] > 0).sum())
            row["assigner_entropy"] = usage_entropy(hist)
        return row

    def state_dict(self) -> dict[str, Any]:
        state = {
            "sums": self.sums.cpu(),
            "window": self.window.cpu(),
            "hist": self.hist.cpu(),
            "hist_noisy": self.hist_noisy.cpu(),
            "images": self.images,
            "skipped": self.skipped,
        }
        if self.features is not None:
            state["features"] = self.features.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("window", "hist", "hist_noisy"):
            getattr(self, name).copy_(state[name])
        sums = state["sums"]
        if sums.numel() == self.sums.numel():
            self.sums.copy_(sums)
        else:  # a checkpoint from before backbone_std: its sums are loss, inv, cluster, projection, count
            self.sums.zero_()
            self.sums[:4] = sums[:4]
            self.sums[4] = float("nan")
            self.sums[_STEPS] = sums[-1]
        if self.features is not None and "features" in state:
            self.features.load_state_dict(state["features"])
        self.images = int(state["images"])
        self.skipped = int(state.get("skipped", 0))
