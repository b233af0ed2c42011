"""Per-epoch monitors kept on the device (no host sync per step).

- loss terms (total, invariance, cluster), averaged over the epoch and over a
  window of recent steps for the progress bar and the step log;
- active clusters: how many of the K clusters received at least one sample this
  epoch, by argmax of the logits and by argmax with Gumbel noise (what the loss used);
- collapse monitor: std over the batch of the L2-normalised projections, averaged
  over dimensions, times sqrt(dim). About 1 for well-spread outputs, 0 at collapse
  (SimSiam paper, Fig. 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .ddp import DistContext
from .objective import LossTerms

TERMS = ("loss", "inv_loss", "cluster_loss", "collapse_std")


def collapse_std(z: torch.Tensor) -> torch.Tensor:
    """std(normalise(z), over the batch).mean() * sqrt(D), in float32."""
    zn = F.normalize(z.detach().float(), dim=1)
    return zn.std(dim=0).mean() * math.sqrt(z.shape[1])


class EpochMeter:
    """Accumulates one epoch's terms, window sums and cluster histograms on ``device``."""

    def __init__(self, num_clusters: int | None, device: torch.device) -> None:
        self.num_clusters, self.device = num_clusters, device
        self.reset()

    def reset(self) -> None:
        dev = self.device
        self.sums = torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=dev)  # + step count
        self.window = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, inv, cluster, count
        k = self.num_clusters or 0
        self.hist = torch.zeros(k, dtype=torch.float64, device=dev)
        self.hist_noisy = torch.zeros(k, dtype=torch.float64, device=dev)
        self.images = 0
        self.skipped = 0  # unreadable images replaced this epoch (this rank)

    def update(self, terms: LossTerms, collapse: torch.Tensor, images: int) -> None:
        vals = torch.stack([terms.total, terms.invariance, terms.cluster, collapse]).detach().double()
        self.sums[:4] += vals
        self.sums[4] += 1
        self.window[:3] += vals[:3]
        self.window[3] += 1
        self.images += images
        if self.num_clusters and terms.assign is not None:
            ones = torch.ones(terms.assign.shape[0], dtype=torch.float64, device=self.device)
            self.hist.index_add_(0, terms.assign, ones)
            self.hist_noisy.index_add_(0, terms.assign_noisy, ones)

    def pop_window(self, ctx: DistContext, stop: bool) -> tuple[dict[str, float], bool, bool]:
        """Mean terms over the recent steps of all ranks, whether any rank asked to stop,
        and whether every epoch sum so far is finite. One collective, one host sync."""
        packed = torch.cat([self.window, self.sums[:4], self.window.new_tensor([float(stop)])])
        packed = ctx.all_reduce_sum(packed).cpu()
        self.window.zero_()
        count = max(packed[3].item(), 1.0)
        means = {name: packed[i].item() / count for i, name in enumerate(TERMS[:3])}
        finite = bool(torch.isfinite(packed[4:8]).all())
        return means, bool(packed[8] > 0), finite

    def summary(self, ctx: DistContext) -> dict[str, float]:
        """The epoch's means over all ranks, active-cluster counts and the collapse monitor."""
        packed = ctx.all_reduce_sum(torch.cat([self.sums, self.hist, self.hist_noisy])).cpu()
        count = max(packed[4].item(), 1.0)
        row: dict[str, float] = {name: packed[i].item() / count for i, name in enumerate(TERMS)}
        k = self.num_clusters or 0
        if k:
            row["active_clusters"] = int((packed[5 : 5 + k] > 0).sum())
            row["active_clusters_gumbel"] = int((packed[5 + k :] > 0).sum())
        return row

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums.cpu(),
            "window": self.window.cpu(),
            "hist": self.hist.cpu(),
            "hist_noisy": self.hist_noisy.cpu(),
            "images": self.images,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("sums", "window", "hist", "hist_noisy"):
            getattr(self, name).copy_(state[name])
        self.images = int(state["images"])
        self.skipped = int(state.get("skipped", 0))
