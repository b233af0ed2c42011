"""The collapse policy: compare each epoch's backbone monitors with the thresholds, warn, and say when to stop.

``backbone_std`` below ``collapse_warn`` warns (:class:`CollapseWarning`). With
``stop_on_collapse``, an epoch whose ``backbone_std`` or ``backbone_rankme`` is below
``collapse_min_std`` / ``collapse_min_rank`` is held back (not saved), and after
``collapse_patience`` such epochs in a row the run stops with :class:`CollapseError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .config import CollapseError, TrainConfig
from .ddp import DistContext


class CollapseWarning(UserWarning):
    """The backbone collapse monitor fell below --collapse-warn: the features are losing their spread."""


class CollapsePolicy:
    """The streak of epochs below the --stop-on-collapse thresholds, and what it means for the run."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, log: Callable[[str], None]) -> None:
        self.cfg, self.ctx, self.log = cfg, ctx, log
        self.streak = 0  # epochs in a row below the thresholds
        self.why = ""  # which monitor was below, in the last epoch

    @property
    def holds_back(self) -> bool:
        """--stop-on-collapse and the last epoch was below a threshold: its state is not saved."""
        return self.cfg.stop_on_collapse and self.streak > 0

    @property
    def exhausted(self) -> bool:
        """--collapse-patience epochs in a row were below a threshold."""
        return self.streak >= self.cfg.collapse_patience

    def below_thresholds(self, row: dict[str, Any]) -> str:
        """Which backbone monitor is below its --stop-on-collapse threshold ("" when none)."""
        cfg = self.cfg
        std, rank = row.get("backbone_std"), row.get("backbone_rankme")
        if std is not None and std < cfg.collapse_min_std:
            return f"backbone_std (std of the normalised backbone features x sqrt(dim)) = {std:.4g} < --collapse-min-std {cfg.collapse_min_std:g}"
        if rank is not None and rank < cfg.collapse_min_rank:
            return f"backbone_rankme (effective rank of the backbone features) = {rank:.4g} < --collapse-min-rank {cfg.collapse_min_rank:g}"
        return ""

    def check(self, row: dict[str, Any], epoch: int, on_disk: str) -> None:
        """Count the finished ``epoch`` (1-based) in or out of the streak; warn below --collapse-warn."""
        why = self.below_thresholds(row)
        self.streak = self.streak + 1 if why else 0
        self.why = why
        if why and self.cfg.stop_on_collapse:
            self.log(
                f"epoch {epoch}: {why} ({self.streak} of --collapse-patience {self.cfg.collapse_patience} "
                f"epoch(s) in a row); not saved: {on_disk}"
            )
        value = row.get("backbone_std")
        if self.ctx.is_main and value is not None and value < self.cfg.collapse_warn:
            warnings.warn(
                f"epoch {epoch}: collapse monitor backbone_std = std(normalised backbone features) * sqrt(dim) = "
                f"{value:.3f}, below the warning level {self.cfg.collapse_warn} (RankMe "
                f"{row.get('backbone_rankme') or float('nan'):.1f}); the backbone features are losing their spread. "
                "Consider an earlier checkpoint (--keep-every), a lower --lr, a larger batch, or --stop-on-collapse.",
                CollapseWarning,
                stacklevel=2,
            )

    def error(self, epoch: int, on_disk: str) -> CollapseError:
        """The error that stops a collapsed run after ``epoch`` completed epochs."""
        cfg = self.cfg
        return CollapseError(
            f"backbone collapse at the end of epoch {epoch}: {self.why}, {self.streak} "
            f"epoch(s) in a row (--collapse-patience {cfg.collapse_patience}); --stop-on-collapse stopped the run: "
            f"{on_disk}. log.csv and training.png show every epoch. Lower --lr, enlarge the batch, or set "
            "--collapse-min-std / --collapse-min-rank."
        )
