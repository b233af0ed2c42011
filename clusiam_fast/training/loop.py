"""The training loop: ``train(config)`` runs (or resumes) one run and writes everything into OUT.

The trainer is in parts, one job each: :mod:`.run_setup` (set-up and resume),
:mod:`.epoch` (the steps of an epoch), :mod:`.saving` (checkpoint and the non-finite
guard), :mod:`.reporting` (console, progress, log.csv, plots, the final report) and
:mod:`.collapse` (the collapse policy); this module decides, epoch by epoch, what to save
and when to stop.

OUT holds ``checkpoint.pt`` (see :mod:`.checkpoint`), ``log.csv`` and
``steps.csv`` (see :mod:`.records`), ``training.png`` (see :mod:`.plots`),
``norm_stats.json``, ``train_config.json`` (rewritten with each checkpoint, so
it always describes the run that checkpoint.pt holds) and, on request, the
exported backbone. Under torchrun only global rank 0 reads and writes OUT (it hands a
checkpoint to resume to the other ranks), logs and shows progress bars: on several nodes,
OUT need only be on rank 0's disk, DATA on every node's.

Before every save the weights, buffers, optimiser state (and gradients, without a
float16 loss scaler) are checked for NaN / inf in one fused reduction: a run that
diverged stops with :class:`NonFiniteLossError` and never overwrites the last good
checkpoint (see :mod:`.saving`).

Collapse (see :mod:`.monitors` and :mod:`.collapse`): each epoch's ``backbone_std`` and
``backbone_rankme`` are compared with ``collapse_min_std`` / ``collapse_min_rank``.
With ``stop_on_collapse`` an epoch below either is not saved (checkpoint.pt keeps
the last epoch above them), and after ``collapse_patience`` such epochs in a row,
or when the last epoch is one, the run stops with :class:`CollapseError`.
``collapse_warn`` only warns (:class:`CollapseWarning`) when backbone_std falls below it.

Schedule: the cosine spans ``schedule_steps`` when given, else the run's length,
min(``max_steps``, epochs x steps per epoch); a resumed run keeps the checkpoint's, unless it
asks for more steps than that spans: then the cosine spans the new length from the resume
step on, as in a run started with those settings (never lr 0 for the added steps; said in one
line and saved). A resume asking for fewer epochs or steps than were done is refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.resolve import DataArg
from ..models import export_backbone
from ..utils.threads import torch_threads
from .collapse import CollapsePolicy, CollapseWarning
from .config import CollapseError, NonFiniteLossError, OutPathError, TrainConfig
from .ddp import DistContext, cleanup_distributed, setup_distributed
from .epoch import EpochRunner
from .position import RunPosition
from .reporting import Reporter
from .run_folder import CHECKPOINT
from .run_setup import RunParts, close_loader, set_up_run
from .saving import Saver
from .stop import StopSignal

__all__ = ["CollapseError", "CollapseWarning", "NonFiniteLossError", "OutPathError", "TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns (on rank 0; other ranks get the same fields)."""

    out_dir: Path
    checkpoint: Path
    status: str  # "complete", "interrupted" or "max_steps"
    epoch: int  # completed epochs
    step: int  # optimiser steps so far
    epochs: list[dict[str, Any]]  # the log.csv rows of whole epochs
    backbone: Path | None = None
    partial: dict[str, Any] | None = None  # the last log.csv row when the run stopped mid-epoch


def train(
    config: TrainConfig, *, data: DataArg | None = None, on_step: Callable[[int], None] | None = None
) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a run; see :class:`TrainConfig` for the settings.

    ``data``: ``config.data`` already resolved (the CLI's :func:`~clusiam_fast.data.resolve.resolve_data`),
    used as it is; by default ``config.data`` is resolved here, once.

    ``on_step(step)`` is called after every optimiser step (progress hooks, tests).
    Raises :class:`NonFiniteLossError` when the loss stops being finite and, with
    ``stop_on_collapse``, :class:`CollapseError` when the backbone collapses. A Ctrl-C
    or SIGTERM saves a checkpoint and returns with ``status="interrupted"``.
    """
    cfg = config.resolved()
    ctx = setup_distributed(cfg.device)
    try:
        if ctx.distributed:  # rank 0's settings: --resume merged them with those saved in its OUT
            cfg = dataclasses.replace(ctx.broadcast_object(cfg), data=cfg.data)  # DATA: this node's copy
        # Intra-op threads come from --threads alone (None: torch's default), never from --workers,
        # so the numbers a CPU run produces do not depend on how many loader workers it had.
        with torch_threads(cfg.threads):
            trainer = _Trainer(cfg, ctx, on_step, data)
            try:
                return trainer.run()
            finally:  # loader workers stop with the run, whatever ended it
                if trainer.parts is not None:
                    close_loader(trainer.parts.loader)
    finally:
        cleanup_distributed(ctx)


class _Trainer:
    """One run: set it up, then train epoch by epoch, deciding after each what to save and whether to stop."""

    def __init__(
        self, cfg: TrainConfig, ctx: DistContext, on_step: Callable[[int], None] | None, data: DataArg | None
    ) -> None:
        self.cfg, self.ctx, self.on_step, self.data = cfg, ctx, on_step, data
        self.out = Path(cfg.out)
        self.position = RunPosition(self.out / CHECKPOINT)
        self.reporter = Reporter(cfg, ctx, self.out)
        self.collapse = CollapsePolicy(cfg, ctx, self.reporter.log)
        self.parts: RunParts | None = None  # set up by run()

    def run(self) -> TrainResult:
        self.parts = parts = set_up_run(
            self.cfg, self.ctx, self.position, self.reporter.log, self.reporter.note, data=self.data
        )
        self.saver = Saver(self.cfg, self.ctx, parts, self.position, self.reporter)
        self.epochs = EpochRunner(self.cfg, self.ctx, parts, self.position, self.reporter, self.collapse, self.on_step)
        self.reporter.log(self.reporter.describe(parts))
        with StopSignal() as stop:
            status = self._train(stop)
        return self._finish(status)

    def _write_logs(self) -> None:
        self.reporter.write_logs(self.parts.records, self.position.partial)

    def _train(self, stop: StopSignal) -> str:
        """Run the remaining epochs; how the run ended: "complete", "interrupted", "max_steps" or "collapsed"."""
        for epoch in range(self.position.epoch, self.cfg.epochs):
            if self.position.max_steps_reached(self.cfg.max_steps):
                if self.position.saved is None:  # --max-steps 0 on a new run: the initial state, as asked
                    self.saver.save(complete=False)
                    self._write_logs()
                return "max_steps"
            status = self._after_epoch(epoch, self.epochs.run(epoch, stop))
            if status is not None:
                return status
        return "complete"

    def _after_epoch(self, epoch: int, reason: str) -> str | None:
        """Save and log what ``epoch`` ended with (``reason``, see :meth:`.EpochRunner.run`); the
        run's status when it stops here, None to go on."""
        cfg, position = self.cfg, self.position
        if position.epoch != epoch + 1:  # stopped mid-epoch
            if not self.collapse.holds_back:
                self.saver.save(complete=False)
            self._write_logs()
            return reason
        last = position.epoch == cfg.epochs
        if self.collapse.holds_back:  # below the thresholds: checkpoint.pt keeps the last good epoch
            self._write_logs()
            if self.collapse.exhausted or last:
                return "collapsed"
            return None if reason == "epoch" else reason
        keep = cfg.keep_every > 0 and position.epoch % cfg.keep_every == 0
        if last or keep or reason != "epoch" or position.epoch % cfg.save_every == 0:
            self.saver.save(complete=last, keep=keep)
        self._write_logs()
        return reason if reason != "epoch" and not last else None

    def _finish(self, status: str) -> TrainResult:
        """Close the records, export the backbone, report; raise :class:`CollapseError` for a collapsed run."""
        cfg, ctx, parts, position = self.cfg, self.ctx, self.parts, self.position
        parts.records.close()
        if status == "collapsed":
            ctx.barrier()
            raise self.collapse.error(position.epoch, position.on_disk())
        backbone = None
        if cfg.export_backbone and status != "interrupted" and ctx.is_main:
            backbone = export_backbone(parts.raw_model, cfg.export_backbone)
            self.reporter.note(str(backbone))
        ctx.barrier()
        self.reporter.final_report(status, backbone, position, self.collapse)
        return TrainResult(
            self.out,
            position.ckpt_path,
            status,
            position.epoch,
            position.step,
            list(parts.records.epochs),
            backbone,
            position.partial,
        )
