"""One epoch of training: the steps, the windowed non-finite check and the epoch's log row.

The loss is checked every --log-every steps (one host sync per window) and at the end of
the epoch; under torchrun all ranks decide to stop at the same step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from .collapse import CollapsePolicy
from .config import TrainConfig
from .ddp import DistContext
from .flops import MfuMeter
from .position import RunPosition
from .reporting import Reporter
from .run_setup import RunParts
from .saving import non_finite_loss
from .schedule import cosine_lr, set_lr
from .stop import StopSignal


class EpochRunner:
    """Runs epochs of a set-up run, moving ``position`` on and counting finished epochs for ``collapse``."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext,
        parts: RunParts,
        position: RunPosition,
        reporter: Reporter,
        collapse: CollapsePolicy,
        on_step: Callable[[int], None] | None,
    ) -> None:
        self.cfg, self.ctx, self.parts, self.position = cfg, ctx, parts, position
        self.reporter, self.collapse, self.on_step = reporter, collapse, on_step
        self.mfu = MfuMeter(parts.raw_model, cfg.crop_size, ctx.device, parts.trainstep.amp_dtype, ctx.world)
        reporter.log(self.mfu.describe())

    def run(self, epoch: int, stop: StopSignal) -> str:
        """Train until the epoch ends ("epoch"), a stop request ("interrupted") or --max-steps ("max_steps")."""
        cfg, ctx, parts, position = self.cfg, self.ctx, self.parts, self.position
        parts.loader.set_epoch(epoch, position.epoch_step)
        if position.epoch_step == 0:
            parts.meter.reset()
        parts.model.train()
        bar = self.reporter.epoch_bar(epoch, parts.steps_per_epoch, position.epoch_step)
        start, images, reason, lr = time.perf_counter(), 0, "epoch", parts.init_lr
        for view1, view2 in parts.loader:
            lr = cosine_lr(parts.init_lr, position.step, parts.total_steps)
            set_lr(parts.optimizer, lr, parts.init_lr)
            terms, monitors = parts.trainstep(view1, view2)
            position.step += 1
            position.epoch_step += 1
            images += view1.shape[0] * ctx.world
            parts.meter.update(terms, monitors, view1.shape[0] * ctx.world)
            if self.on_step is not None:
                self.on_step(position.step)
            bar.update(1)
            at_max = position.max_steps_reached(cfg.max_steps)
            sync = position.epoch_step % cfg.log_every == 0 or position.epoch_step == parts.steps_per_epoch or at_max
            if not ctx.distributed and stop.requested:
                sync = True  # single process: react at once; under DDP all ranks decide at the same step
            if sync:
                means, stop_any, finite = parts.meter.pop_window(ctx, stop.requested)
                if not finite:
                    raise non_finite_loss(f"epoch {epoch + 1}, step {position.step}", means, position.on_disk())
                parts.records.add_step({"step": position.step, "epoch": epoch + 1, "lr": lr, **means})
                rate = images / max(time.perf_counter() - start, 1e-9)
                self.reporter.show_step(bar, means, lr, rate, self.mfu(rate))
                if stop_any:
                    reason = "interrupted"
                    break
            if at_max:
                reason = "max_steps"
                break
        bar.close()
        elapsed = time.perf_counter() - start
        skipped = parts.loader.pop_skipped()
        parts.meter.skipped += len(skipped)
        self.reporter.report_skipped(skipped)
        rate = images / max(elapsed, 1e-9)
        if position.epoch_step < parts.steps_per_epoch:
            position.partial = self._row(epoch, lr, rate, elapsed)
            self.reporter.log(
                f"epoch {epoch + 1} (partial, {position.epoch_step} of {parts.steps_per_epoch} steps): "
                + self.reporter.summary_text(position.partial)
            )
            return reason if reason != "epoch" else "interrupted"
        self._finish(epoch, lr, rate, elapsed)
        return reason

    def _row(self, epoch: int, lr: float, rate: float, elapsed: float) -> dict[str, Any]:
        """The log.csv row of the epoch's steps so far (collective: every rank calls it)."""
        meter, ctx = self.parts.meter, self.ctx
        row = meter.summary(ctx)
        skipped = ctx.all_reduce_sum(torch.tensor([meter.skipped], dtype=torch.float64, device=ctx.device))
        row.update(
            epoch=epoch + 1,
            step=self.position.step,
            lr=lr,
            images_per_s=rate,
            mfu=self.mfu(rate),
            memory_peak_gib=torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else None,
            epoch_time_s=elapsed,
            skipped_images=int(skipped.item()),
        )
        if not self.cfg.has_clusters:
            row["cluster_loss"] = None
        return row

    def _finish(self, epoch: int, lr: float, rate: float, elapsed: float) -> None:
        """Check and log the completed epoch, and count it for the collapse policy."""
        row = self._row(epoch, lr, rate, elapsed)
        losses = ("loss", "inv_loss", "cluster_loss")
        if not all(torch.isfinite(torch.tensor([row[k] or 0.0 for k in losses]))):
            raise non_finite_loss(f"the end of epoch {epoch + 1}", {k: row[k] for k in losses}, self.position.on_disk())
        self.parts.records.add_epoch(row)
        self.position.epoch, self.position.epoch_step = epoch + 1, 0
        self.reporter.log(f"epoch {epoch + 1}: " + self.reporter.summary_text(row))
        self.collapse.check(row, epoch + 1, self.position.on_disk())
