"""The training loop: ``train(config)`` runs (or resumes) one run and writes everything into OUT.

OUT holds ``checkpoint.pt`` (see :mod:`.checkpoint`), ``log.csv`` and
``steps.csv`` (see :mod:`.records`), ``training.png`` (see :mod:`.plots`),
``norm_stats.json``, ``train_config.json`` and, on request, the exported
backbone. Under torchrun only rank 0 writes files, logs and progress bars.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..models import build_model, export_backbone, model_config, read_checkpoint
from ..models.factory import MODEL_KEYS
from ..utils.atomic import atomic_write_json
from ..utils.threads import torch_threads
from .checkpoint import CHECKPOINT, restore_rank_state, save_checkpoint
from .config import TrainConfig
from .curves import plot_training
from .ddp import DistContext, cleanup_distributed, setup_distributed
from .loader import build_train_loader, resolve_source
from .monitors import EpochMeter
from .norm_stats import load_or_compute_stats
from .records import RunRecords
from .schedule import build_optimizer, cosine_lr, scaled_lr, set_lr
from .step import TrainStep, resolve_amp_dtype
from .stop import StopSignal


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


class CollapseWarning(UserWarning):
    """The collapse monitor fell: the projections are losing their spread."""


@dataclass
class TrainResult:
    """What :func:`train` returns (on rank 0; other ranks get the same fields)."""

    out_dir: Path
    checkpoint: Path
    status: str  # "complete", "interrupted" or "max_steps"
    epoch: int  # completed epochs
    step: int  # optimiser steps so far
    epochs: list[dict[str, Any]]  # the log.csv rows
    backbone: Path | None = None


def train(config: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a run; see :class:`TrainConfig` for the settings.

    ``on_step(step)`` is called after every optimiser step (progress hooks, tests).
    Raises :class:`NonFiniteLossError` when the loss stops being finite. A Ctrl-C
    or SIGTERM saves a checkpoint and returns with ``status="interrupted"``.
    """
    cfg = config.resolved()
    ctx = setup_distributed(cfg.device)
    try:
        with torch_threads(None):  # _share_cpu_with_workers may lower it for the run
            _share_cpu_with_workers(cfg, ctx)
            return _Trainer(cfg, ctx, on_step).run()
    finally:
        cleanup_distributed(ctx)


def _share_cpu_with_workers(cfg: TrainConfig, ctx: DistContext) -> None:
    """On the CPU, leave one core per loader worker: intra-op threads = CPUs - workers (at least 1).

    Oversubscribed OpenMP threads spin against the augmentation workers and can make a
    step several times slower. An explicit OMP_NUM_THREADS (torchrun sets 1) is respected.
    """
    if ctx.device.type != "cpu" or cfg.workers == 0 or "OMP_NUM_THREADS" in os.environ:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), cpus - cfg.workers)))


def _check_resumable(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    saved = ckpt["config"]
    for key in MODEL_KEYS:
        if key in saved and saved[key] != getattr(cfg, key, None):
            raise ValueError(
                f"--resume: {path} was trained with {key}={saved[key]!r} but this run asks for "
                f"{getattr(cfg, key, None)!r}; use the same setting or another --out"
            )


class _Trainer:
    """State of one run; :meth:`run` is the whole job."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, on_step) -> None:
        self.cfg, self.ctx, self.on_step = cfg, ctx, on_step
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / CHECKPOINT
        self.epoch = self.epoch_step = self.step = 0
        self._best_collapse = 0.0

    # ---------------------------------------------------------------- output
    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message)

    # ---------------------------------------------------------------- set-up
    def _load_resume(self) -> dict[str, Any] | None:
        cfg = self.cfg
        if self.ckpt_path.exists() and not cfg.resume and not cfg.overwrite:
            raise FileExistsError(
                f"{self.ckpt_path} exists: pass --resume to continue that run, --overwrite to start it again, "
                "or choose another --out"
            )
        if not cfg.resume:
            return None
        if not self.ckpt_path.exists():
            self.log(f"--resume: no checkpoint in {self.out} yet, starting a new run")
            return None
        ckpt = read_checkpoint(self.ckpt_path)
        _check_resumable(ckpt, cfg, self.ckpt_path)
        if ckpt.get("world_size", 1) != self.ctx.world:
            self.log(
                f"--resume: the checkpoint was written by {ckpt.get('world_size')} process(es), this run has "
                f"{self.ctx.world}: the data order differs from an uninterrupted run"
            )
        return ckpt

    def setup(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        ckpt = self._load_resume()
        self.source = resolve_source(cfg.data)
        if ckpt is not None:
            self.norm_stats = ckpt["norm_stats"]  # the model was trained with these: keep them
            if self.norm_stats.get("fingerprint") != self.source.fingerprint:
                self.log(
                    f"--resume: DATA {self.source.path} is not the data the checkpoint was trained on; "
                    "continuing with the checkpoint's normalisation statistics"
                )
        else:
            stats = None
            if ctx.is_main:
                stats = load_or_compute_stats(
                    self.out,
                    self.source,
                    max_images=cfg.max_stat_images,
                    seed=cfg.seed,
                    workers=cfg.workers,
                    progress=cfg.progress,
                )
            self.norm_stats = ctx.broadcast_object(stats)
        mean, std = self.norm_stats["mean"], self.norm_stats["std"]

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(**model_config(dataclasses.asdict(cfg)))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        if cfg.sync_bn:
            if ctx.distributed and ctx.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            elif ctx.distributed and ctx.is_main:
                warnings.warn(
                    "--sync-bn: PyTorch's SyncBatchNorm runs only on GPUs; ignored on the CPU "
                    "(each process normalises over its own part of the batch)",
                    stacklevel=2,
                )
        model.to(ctx.device)
        if ctx.device.type == "cuda" and cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.model = (
            DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            if ctx.distributed
            else model
        )

        self.loader = build_train_loader(self.source, cfg, ctx, mean, std)
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data {self.source.path}: {len(self.source)} images make no full batch of {cfg.batch_size} "
                f"over {ctx.world} process(es); lower --batch-size or add images"
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.init_lr = scaled_lr(cfg.lr, cfg.batch_size)
        self.optimizer = build_optimizer(model, self.init_lr, cfg.momentum, cfg.weight_decay, cfg.fix_pred_lr)
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(cfg.seed + 1_000_003 * (ctx.rank + 1))
        fp16 = resolve_amp_dtype(cfg, ctx.device) == torch.float16
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)  # only float16 needs loss scaling
        self.trainstep = TrainStep(
            self.model, self.optimizer, self.scaler, cfg, ctx.device, self.generator, ctx.distributed
        )
        self.meter = EpochMeter(model.num_clusters, ctx.device)
        self.records = RunRecords(self.out, tensorboard=cfg.tensorboard, enabled=ctx.is_main)

        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            ranks = ckpt["ranks"]
            restore_rank_state(ranks[ctx.rank if ctx.rank < len(ranks) else 0], self.generator, self.meter)
            self.records.load_state_dict(ckpt["records"])
            self.epoch, self.epoch_step, self.step = ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]
            if self.epoch_step >= self.steps_per_epoch:  # written at the very end of an epoch
                self.epoch, self.epoch_step = self.epoch + 1, 0
            self.log(
                f"resumed {self.ckpt_path}: {self.epoch} epoch(s) and {self.epoch_step} step(s) of epoch "
                f"{self.epoch + 1} done (step {self.step})"
            )
        if ctx.is_main:
            atomic_write_json(self.out / "train_config.json", dataclasses.asdict(cfg))
        self.records.start(self.step)

    def _describe(self) -> str:
        cfg, ctx = self.cfg, self.ctx
        amp = (
            f"autocast {str(self.trainstep.amp_dtype).replace('torch.', '')}" if self.trainstep.amp_dtype else "float32"
        )
        alpha = (
            f", alpha {cfg.alpha}, K {cfg.num_clusters}, gumbel {'on' if cfg.gumbel else 'off'}"
            if cfg.has_clusters
            else ""
        )
        return (
            f"{cfg.method} {cfg.arch}{alpha} | {len(self.source)} patches ({self.source.kind} {self.source.path}) | "
            f"batch {cfg.batch_size} over {ctx.world} process(es) on {ctx.device}, {amp} | crop {cfg.crop_size} | "
            f"lr {self.init_lr:.4g} cosine over {self.total_steps} steps | {self.steps_per_epoch} steps/epoch, "
            f"{cfg.epochs} epochs | loader {cfg.loader}"
        )

    # ---------------------------------------------------------------- saving
    def save(self, complete: bool, keep: bool = False) -> None:
        save_checkpoint(
            self.out,
            self.ctx,
            model=self.raw_model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            config={**dataclasses.asdict(self.cfg), "resume": False, "overwrite": False},
            epoch=self.epoch,
            epoch_step=self.epoch_step,
            step=self.step,
            generator=self.generator,
            meter=self.meter,
            records=self.records.state_dict(),
            norm_stats=self.norm_stats,
            complete=complete,
            keep_as=f"epoch_{self.epoch:04d}.pt" if keep else None,
        )

    def write_logs(self) -> None:
        if not self.ctx.is_main:
            return
        self.records.write()
        try:
            plot_training(
                self.records.epochs,
                self.records.steps,
                self.out / "training.png",
                title=f"{self.cfg.method} - {self.out}",
                collapse_warn=self.cfg.collapse_warn,
                num_clusters=self.cfg.num_clusters if self.cfg.has_clusters else None,
            )
        except ImportError as error:  # matplotlib is optional for training
            self.log(f"training.png skipped: {error}")

    # ---------------------------------------------------------------- epochs
    def _max_steps_reached(self) -> bool:
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def _non_finite(self, where: str, means: dict[str, float]) -> NonFiniteLossError:
        last = f"{self.ckpt_path} (epoch {self._saved_epoch})" if self._saved_epoch is not None else "no checkpoint yet"
        terms = ", ".join(f"{k}={v:.4g}" for k, v in means.items())
        return NonFiniteLossError(
            f"non-finite loss at {where} ({terms}); stopped without saving, the last good state is {last}. "
            "Lower --lr, check the data, or try --amp-dtype bf16 / no --amp."
        )

    def run_epoch(self, epoch: int, stop: StopSignal) -> str:
        """Train until the epoch ends ("epoch"), a stop request ("interrupted") or --max-steps ("max_steps")."""
        cfg, ctx = self.cfg, self.ctx
        self.loader.set_epoch(epoch, self.epoch_step)
        if self.epoch_step == 0:
            self.meter.reset()
        self.model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=self.epoch_step,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (ctx.is_main and cfg.progress),
            dynamic_ncols=True,
            leave=True,
        )
        start, images, reason, lr = time.perf_counter(), 0, "epoch", self.init_lr
        for view1, view2 in self.loader:
            lr = cosine_lr(self.init_lr, self.step, self.total_steps)
            set_lr(self.optimizer, lr, self.init_lr)
            terms, collapse = self.trainstep(view1, view2)
            self.step += 1
            self.epoch_step += 1
            images += view1.shape[0] * ctx.world
            self.meter.update(terms, collapse, view1.shape[0] * ctx.world)
            if self.on_step is not None:
                self.on_step(self.step)
            bar.update(1)
            at_max = self._max_steps_reached()
            sync = self.epoch_step % cfg.log_every == 0 or self.epoch_step == self.steps_per_epoch or at_max
            if not ctx.distributed and stop.requested:
                sync = True  # single process: react at once; under DDP all ranks decide at the same step
            if sync:
                means, stop_any, finite = self.meter.pop_window(ctx, stop.requested)
                if not finite:
                    raise self._non_finite(f"epoch {epoch + 1}, step {self.step}", means)
                self.records.add_step({"step": self.step, "epoch": epoch + 1, "lr": lr, **means})
                rate = images / max(time.perf_counter() - start, 1e-9)
                postfix = {"loss": means["loss"], "inv": means["inv_loss"]}
                if cfg.has_clusters:
                    postfix["clu"] = means["cluster_loss"]
                bar.set_postfix(
                    {**{k: f"{v:.4f}" for k, v in postfix.items()}, "lr": f"{lr:.3g}", "img/s": f"{rate:.0f}"}
                )
                if stop_any:
                    reason = "interrupted"
                    break
            if at_max:
                reason = "max_steps"
                break
        bar.close()
        elapsed = time.perf_counter() - start
        skipped = self.loader.pop_skipped()
        self.meter.skipped += len(skipped)
        for name in skipped:
            tqdm.write(f"[rank {ctx.rank}] skipped unreadable image: {name}")
        if self.epoch_step < self.steps_per_epoch:
            return reason if reason != "epoch" else "interrupted"
        self._finish_epoch(epoch, lr, images / max(elapsed, 1e-9), elapsed)
        return reason

    def _finish_epoch(self, epoch: int, lr: float, rate: float, elapsed: float) -> None:
        row = self.meter.summary(self.ctx)
        if not all(torch.isfinite(torch.tensor([row[k] for k in ("loss", "inv_loss", "cluster_loss")]))):
            raise self._non_finite(
                f"the end of epoch {epoch + 1}", {k: row[k] for k in ("loss", "inv_loss", "cluster_loss")}
            )
        skipped = self.ctx.all_reduce_sum(
            torch.tensor([self.meter.skipped], dtype=torch.float64, device=self.ctx.device)
        )
        row.update(
            epoch=epoch + 1,
            step=self.step,
            lr=lr,
            images_per_s=rate,
            epoch_time_s=elapsed,
            skipped_images=int(skipped.item()),
        )
        if not self.cfg.has_clusters:
            row["cluster_loss"] = None
        self.records.add_epoch(row)
        self.epoch, self.epoch_step = epoch + 1, 0
        clusters = (
            f", active clusters {row['active_clusters']} (gumbel {row['active_clusters_gumbel']})"
            if self.cfg.has_clusters
            else ""
        )
        self.log(
            f"epoch {epoch + 1}: loss {row['loss']:.4f} (inv {row['inv_loss']:.4f}"
            + (f", cluster {row['cluster_loss']:.4f}" if self.cfg.has_clusters else "")
            + f"){clusters}, collapse monitor {row['collapse_std']:.3f}, {rate:.1f} images/s"
        )
        self._check_collapse(row["collapse_std"], epoch + 1)

    def _check_collapse(self, value: float, epoch: int) -> None:
        self._best_collapse = max(self._best_collapse, value)
        if not self.ctx.is_main:
            return
        if value < self.cfg.collapse_warn or value < 0.5 * self._best_collapse:
            warnings.warn(
                f"epoch {epoch}: collapse monitor std(normalised z)*sqrt(dim) = {value:.3f} (best {self._best_collapse:.3f}, "
                f"warning level {self.cfg.collapse_warn}); the projections are losing their spread. Consider an "
                f"earlier checkpoint (--keep-every), a lower --lr or a larger batch.",
                CollapseWarning,
                stacklevel=2,
            )

    # ---------------------------------------------------------------- the job
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.setup()
        self._saved_epoch = self.epoch if self.ckpt_path.exists() and cfg.resume else None
        for row in self.records.epochs:
            self._best_collapse = max(self._best_collapse, row.get("collapse_std") or 0.0)
        self.log(self._describe())
        status = "complete"
        with StopSignal() as stop:
            for epoch in range(self.epoch, cfg.epochs):
                if self._max_steps_reached():
                    status = "max_steps"
                    break
                reason = self.run_epoch(epoch, stop)
                if self.epoch == epoch + 1:  # the epoch completed
                    last = self.epoch == cfg.epochs
                    keep = cfg.keep_every > 0 and self.epoch % cfg.keep_every == 0
                    if last or keep or reason != "epoch" or self.epoch % cfg.save_every == 0:
                        self.save(complete=last, keep=keep)
                        self._saved_epoch = self.epoch
                    self.write_logs()
                    if reason != "epoch" and not last:
                        status = reason
                        break
                else:
                    self.save(complete=False)
                    self._saved_epoch = self.epoch
                    self.write_logs()
                    status = reason
                    break
        self.records.close()
        backbone = None
        if cfg.export_backbone and status != "interrupted" and self.ctx.is_main:
            backbone = export_backbone(self.raw_model, cfg.export_backbone)
        self.ctx.barrier()
        self._report(status, backbone)
        return TrainResult(self.out, self.ckpt_path, status, self.epoch, self.step, list(self.records.epochs), backbone)

    def _report(self, status: str, backbone: Path | None) -> None:
        what = {
            "complete": f"training complete ({self.epoch} epochs, {self.step} steps)",
            "interrupted": f"interrupted at epoch {self.epoch + 1}, step {self.step}: checkpoint saved; "
            "run the same command with --resume to continue exactly",
            "max_steps": f"stopped at --max-steps {self.cfg.max_steps} (epoch {self.epoch + 1}, step {self.step}); "
            "--resume with a larger --max-steps continues",
        }[status]
        lines = [
            what,
            f"outputs in {self.out}/:",
            f"  {CHECKPOINT}  model + optimiser + RNG state (load with clusiam_fast.models.load_checkpoint)",
            "  log.csv, steps.csv  per-epoch and per-step losses, lr, active clusters, collapse monitor, images/s",
            "  training.png  loss curves, active clusters, collapse monitor, lr",
            "  norm_stats.json, train_config.json",
        ]
        if backbone is not None:
            lines.append(f"backbone (torchvision state_dict, no fc): {backbone}")
        elif self.cfg.export_backbone:
            lines.append("--export-backbone: not written for an interrupted run (it is written when the run ends)")
        self.log("\n".join(lines))
