"""The training loop: ``train(config)`` runs (or resumes) one run and writes everything into OUT.

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
checkpoint.

Collapse (see :mod:`.monitors`): each epoch's ``backbone_std`` and
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
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..models import build_model, export_backbone, model_config
from ..models.factory import MODEL_KEYS
from ..utils.atomic import atomic_write_json, remove_stale_temps
from ..utils.threads import torch_threads
from .checkpoint import CHECKPOINT, read_resume_checkpoint, restore_rank_state, save_checkpoint
from .config import CollapseError, NonFiniteLossError, OutPathError, TrainConfig, check_out_outside_data, check_out_path
from .curves import plot_training
from .ddp import DistContext, cleanup_distributed, setup_distributed
from .loader import build_train_loader, resolve_source
from .monitors import EpochMeter
from .norm_stats import load_or_compute_stats
from .records import RunRecords
from .schedule import build_optimizer, check_resume_length, cosine_lr, resolve_schedule, scaled_lr, set_lr
from .step import TrainStep, resolve_amp_dtype
from .stop import StopSignal
from .sync_bn import convert_batchnorm

__all__ = ["CollapseError", "CollapseWarning", "NonFiniteLossError", "OutPathError", "TrainResult", "train"]


class CollapseWarning(UserWarning):
    """The backbone collapse monitor fell below --collapse-warn: the features are losing their spread."""


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


def train(config: TrainConfig, *, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a run; see :class:`TrainConfig` for the settings.

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
            trainer = _Trainer(cfg, ctx, on_step)
            try:
                return trainer.run()
            finally:  # loader workers stop with the run, whatever ended it
                close = getattr(getattr(trainer, "loader", None), "close", None)
                if close is not None:
                    close()
    finally:
        cleanup_distributed(ctx)


def _check_resumable(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    saved = ckpt["config"]
    if "method" in saved and saved["method"] != cfg.method:
        raise ValueError(
            f"--resume: {path} was trained with --method {saved['method']}, this run asks for --method "
            f"{cfg.method}; the method defines the model: leave --method out to continue that run, or train "
            f"{cfg.method} in another --out"
        )
    if "batch_size" in saved and saved["batch_size"] != cfg.batch_size:
        raise ValueError(
            f"--resume: {path} was trained with --batch-size {saved['batch_size']}, this run asks for "
            f"--batch-size {cfg.batch_size}; the lr schedule and the place in the epoch are counted in batches "
            f"of {saved['batch_size']}: keep --batch-size {saved['batch_size']} (or leave it out) to continue, "
            "or start a new run in another --out (or with --overwrite)"
        )
    for key in MODEL_KEYS:
        if key in saved and saved[key] != getattr(cfg, key, None):
            raise ValueError(
                f"--resume: {path} was trained with {key}={saved[key]!r} but this run asks for "
                f"{getattr(cfg, key, None)!r}; use the same setting or another --out"
            )


def _picklable(error: Exception) -> Exception:
    """``error``, or a RuntimeError with its message when it cannot cross to the other ranks."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class _Trainer:
    """State of one run; :meth:`run` is the whole job."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, on_step) -> None:
        self.cfg, self.ctx, self.on_step = cfg, ctx, on_step
        self.out = Path(cfg.out)
        self.ckpt_path = self.out / CHECKPOINT
        self.epoch = self.epoch_step = self.step = 0
        self._collapse_streak, self._collapse_why = 0, ""  # epochs in a row below the thresholds, and why
        self._partial: dict[str, Any] | None = None  # the unfinished epoch's row, when the run stops mid-epoch
        self._reported_bad: set[str] = set()  # unreadable files named so far (each is named once per run)
        self._saved: tuple[int, int] | None = None  # (epoch, step) of the checkpoint on disk
        self._written: list[str] = []  # what this run wrote into OUT, for the final report

    # ---------------------------------------------------------------- output
    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message)

    # ---------------------------------------------------------------- set-up
    def _check_out(self) -> None:
        check_out_path(self.out)

    def _check_out_outside_data(self) -> None:
        check_out_outside_data(self.out, self.source.path, self.source.kind)

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
        ckpt = read_resume_checkpoint(self.ckpt_path, cfg.trust_pickle)
        _check_resumable(ckpt, cfg, self.ckpt_path)
        if ckpt.get("world_size", 1) != self.ctx.world:
            self.log(
                f"--resume: the checkpoint was written by {ckpt.get('world_size')} process(es), this run has "
                f"{self.ctx.world}: the data order differs from an uninterrupted run"
            )
        return ckpt

    def _prepare_out(self) -> None:
        """Create OUT and delete temporary files that killed writes of an earlier run left there."""
        if not self.ctx.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(self.out) + remove_stale_temps(self.out / "checkpoints")
        if stale:
            self.log(f"removed {len(stale)} temporary file(s) left by interrupted writes in {self.out}")

    def _setup_norm_stats(self, ckpt: dict[str, Any] | None) -> None:
        cfg, ctx = self.cfg, self.ctx
        if ckpt is not None:
            self.norm_stats = ckpt["norm_stats"]  # the model was trained with these: keep them
            if self.norm_stats.get("fingerprint") != self.source.fingerprint:
                self.log(
                    f"--resume: DATA {self.source.path} is not the data the checkpoint was trained on; "
                    "continuing with the checkpoint's normalisation statistics"
                )
            return
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
            self._written.append("norm_stats.json")
        self.norm_stats = ctx.broadcast_object(stats)

    def _setup_model(self, ckpt: dict[str, Any] | None) -> None:
        cfg, ctx = self.cfg, self.ctx
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(**model_config(dataclasses.asdict(cfg)))
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
        if cfg.sync_bn and ctx.distributed:  # batch statistics over the global batch
            if ctx.device.type == "cuda":
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:  # PyTorch's SyncBatchNorm is GPU-only: the same with gloo collectives
                model = convert_batchnorm(model)
        model.to(ctx.device)
        if ctx.device.type == "cuda" and cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.raw_model = model
        self.model = (
            DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            if ctx.distributed
            else model
        )

    def _resolve_schedule(self, ckpt: dict[str, Any] | None) -> tuple[int, str]:
        """(steps the cosine spans, what set them); see :func:`.schedule.resolve_schedule`."""
        if ckpt is not None:
            check_resume_length(self.cfg, ckpt, self.steps_per_epoch, self.ckpt_path)
        steps, source, notice = resolve_schedule(self.cfg, self.steps_per_epoch, ckpt)
        if notice:
            self.log(notice)
        return steps, source

    def _setup_training(self, ckpt: dict[str, Any] | None) -> None:
        """Loader, schedule, optimiser, scaler, Gumbel generator, step, meters and records."""
        cfg, ctx = self.cfg, self.ctx
        self.loader = build_train_loader(self.source, cfg, ctx, self.norm_stats["mean"], self.norm_stats["std"])
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data {self.source.path}: {len(self.source)} images make no full batch of {cfg.batch_size} "
                f"over {ctx.world} process(es); lower --batch-size or add images"
            )
        self.total_steps, self.schedule_source = self._resolve_schedule(ckpt)
        self.init_lr = scaled_lr(cfg.lr, cfg.batch_size)
        if self.init_lr > torch.finfo(torch.float32).max:
            raise ValueError(
                f"--lr {cfg.lr:g}: the run's lr, {cfg.lr:g} * {cfg.batch_size}/256 = {self.init_lr:.4g}, does not fit "
                "in float32 (the weights' type); use a much smaller --lr"
            )
        self.optimizer = build_optimizer(self.raw_model, self.init_lr, cfg.momentum, cfg.weight_decay, cfg.fix_pred_lr)
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(cfg.seed + 1_000_003 * (ctx.rank + 1))
        fp16 = resolve_amp_dtype(cfg, ctx.device) == torch.float16
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)  # only float16 needs loss scaling
        self.trainstep = TrainStep(
            self.model, self.optimizer, self.scaler, cfg, ctx.device, self.generator, ctx.distributed
        )
        self.meter = EpochMeter(
            self.raw_model.num_clusters, ctx.device, feature_dim=self.raw_model.feature_dim, window=cfg.rankme_window
        )
        self.records = RunRecords(self.out, tensorboard=cfg.tensorboard, enabled=ctx.is_main)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        ctx = self.ctx
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for group in self.optimizer.param_groups:  # flags given now override the saved hyper-parameters
            group["momentum"], group["weight_decay"] = self.cfg.momentum, self.cfg.weight_decay
        self.scaler.load_state_dict(ckpt["scaler"])
        ranks = ckpt["ranks"]
        restore_rank_state(ranks[ctx.rank if ctx.rank < len(ranks) else 0], self.generator, self.meter)
        self.records.load_state_dict(ckpt["records"])
        self.epoch, self.epoch_step, self.step = ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]
        self._saved = (self.epoch, self.step)
        if self.epoch_step >= self.steps_per_epoch:  # written at the very end of an epoch
            self.epoch, self.epoch_step = self.epoch + 1, 0
        self.log(
            f"resumed {self.ckpt_path}: {self.epoch} epoch(s) and {self.epoch_step} step(s) of epoch "
            f"{self.epoch + 1} done (step {self.step})"
        )

    def _on_main(self, job: Callable[[], Any]) -> Any:
        """``job()`` run on global rank 0 only, its result (or its error, raised) on every rank.

        OUT is rank 0's alone: other nodes need not see its disk, and no rank waits in a
        collective for one that failed a check.
        """
        outcome: tuple[bool, Any] | None = None
        if self.ctx.is_main:
            try:
                outcome = (True, job())
            except Exception as error:
                outcome = (False, error if not self.ctx.distributed else _picklable(error))
        ok, value = self.ctx.broadcast_object(outcome)
        if not ok:
            raise value
        return value

    def _check_out_and_resume(self) -> dict[str, Any] | None:
        self._check_out()
        return self._load_resume()

    def setup(self) -> None:
        """Check OUT, read the checkpoint to resume, then build data, model and optimiser (nothing is
        written to OUT before every check has passed, except norm_stats.json for a new run). OUT is
        looked at on global rank 0 only, which hands the checkpoint to the other ranks."""
        ckpt = self._on_main(self._check_out_and_resume)
        self.source = resolve_source(self.cfg.data)
        sizes = self.ctx.gather_objects(len(self.source))
        if len(set(sizes)) > 1:
            raise ValueError(
                f"DATA {self.cfg.data} holds {', '.join(map(str, sizes))} patches on ranks 0..{len(sizes) - 1}: "
                "every node must see the same data (the same files, or a copy of them)"
            )
        self._on_main(self._check_out_outside_data)
        self._prepare_out()
        self._setup_norm_stats(ckpt)
        self._setup_model(ckpt)
        self._setup_training(ckpt)
        if ckpt is not None:
            self._restore(ckpt)
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
            f"lr {self.init_lr:.4g} cosine over {self.total_steps} steps ({self.schedule_source}) | "
            f"{self.steps_per_epoch} steps/epoch, "
            f"{cfg.epochs} epochs | loader {cfg.loader}"
        )

    # ---------------------------------------------------------------- saving
    def _count_non_finite(self) -> tuple[int, int]:
        """(tensors holding NaN / inf, tensors checked) over weights, buffers, optimiser state and
        gradients: one fused max-abs reduction and one host sync, summed over the ranks."""
        params = list(self.raw_model.parameters())
        tensors = params + [b for b in self.raw_model.buffers() if b.is_floating_point()]
        tensors += [
            v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim()
        ]
        if not self.scaler.is_enabled():  # a float16 scaler skips steps with inf gradients: those are expected
            tensors += [p.grad for p in params if p.grad is not None]
        tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
        if hasattr(torch, "_foreach_norm"):
            norms = torch._foreach_norm(tensors, float("inf"))  # max |x|: NaN and inf propagate, no overflow
        else:  # pragma: no cover - older torch
            norms = [t.detach().abs().amax() for t in tensors]
        bad = (~torch.isfinite(torch.stack([n.float() for n in norms]))).sum().double().reshape(1)
        return int(self.ctx.all_reduce_sum(bad).item()), len(tensors)

    def _where(self) -> str:
        if self.epoch_step == 0:
            return f"the end of epoch {self.epoch}, step {self.step}"
        return f"epoch {self.epoch + 1}, step {self.step}"

    def _on_disk(self) -> str:
        if self._saved is None:
            return "no checkpoint has been written yet"
        epoch, step = self._saved
        return f"the checkpoint on disk, {self.ckpt_path} (epoch {epoch}), step {step}, is untouched"

    def save(self, complete: bool, keep: bool = False) -> None:
        """Write checkpoint.pt (and train_config.json) unless the state has gone non-finite."""
        bad, checked = self._count_non_finite()
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights at {self._where()}: {bad} of {checked} tensors (weights, buffers, optimiser "
                f"state, gradients) hold NaN or inf; refused to save: {self._on_disk()}. "
                "Lower --lr (or --weight-decay), check the data, or try --amp-dtype bf16 / no --amp."
            )
        save_checkpoint(
            self.out,
            self.ctx,
            model=self.raw_model,
            optimizer=self.optimizer,
            scaler=self.scaler,
            config={**dataclasses.asdict(self.cfg), "resume": False, "overwrite": False, "trust_pickle": False},
            epoch=self.epoch,
            epoch_step=self.epoch_step,
            step=self.step,
            generator=self.generator,
            meter=self.meter,
            records=self.records.state_dict(),
            norm_stats=self.norm_stats,
            complete=complete,
            keep_as=f"epoch_{self.epoch:04d}.pt" if keep else None,
            schedule={"steps": self.total_steps, "source": self.schedule_source.split(", ")[0]},
        )
        if self.ctx.is_main:
            atomic_write_json(self.out / "train_config.json", {**dataclasses.asdict(self.cfg), "trust_pickle": False})
        self._saved = (self.epoch, self.step)
        for name in (CHECKPOINT, "train_config.json", f"checkpoints/epoch_{self.epoch:04d}.pt" if keep else None):
            if name and name not in self._written:
                self._written.append(name)

    def write_logs(self) -> None:
        """log.csv, steps.csv and training.png, with the unfinished epoch's row when the run stopped mid-epoch."""
        if not self.ctx.is_main:
            return
        self.records.write(self._partial)
        for name in ("log.csv", "steps.csv"):
            if name not in self._written:
                self._written.append(name)
        try:
            plot_training(
                self.records.epochs + ([{**self._partial, "partial": 1}] if self._partial else []),
                self.records.steps,
                self.out / "training.png",
                title=f"{self.cfg.method} - {self.out}",
                collapse_warn=self.cfg.collapse_warn,
                num_clusters=self.cfg.num_clusters if self.cfg.has_clusters else None,
                min_std=self.cfg.collapse_min_std if self.cfg.stop_on_collapse else None,
                min_rank=self.cfg.collapse_min_rank if self.cfg.stop_on_collapse else None,
            )
            if "training.png" not in self._written:
                self._written.append("training.png")
        except ImportError as error:  # matplotlib is optional for training
            self.log(f"training.png skipped: {error}")

    # ---------------------------------------------------------------- epochs
    def _max_steps_reached(self) -> bool:
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def _non_finite(self, where: str, means: dict[str, float]) -> NonFiniteLossError:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in means.items())
        return NonFiniteLossError(
            f"non-finite loss at {where} ({terms}); stopped without saving: {self._on_disk()}. "
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
            terms, monitors = self.trainstep(view1, view2)
            self.step += 1
            self.epoch_step += 1
            images += view1.shape[0] * ctx.world
            self.meter.update(terms, monitors, view1.shape[0] * ctx.world)
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
        seen = set(self._reported_bad)
        self._reported_bad.update(skipped)
        for name in dict.fromkeys(n for n in skipped if n not in seen):
            tqdm.write(f"[rank {ctx.rank}] skipped unreadable image: {name}")
        if again := sum(n in seen for n in skipped):
            tqdm.write(f"[rank {ctx.rank}] skipped {again} unreadable image(s) named before")
        rate = images / max(elapsed, 1e-9)
        if self.epoch_step < self.steps_per_epoch:
            self._partial = self._epoch_row(epoch, lr, rate, elapsed)
            self.log(
                f"epoch {epoch + 1} (partial, {self.epoch_step} of {self.steps_per_epoch} steps): "
                + self._summary_text(self._partial)
            )
            return reason if reason != "epoch" else "interrupted"
        self._finish_epoch(epoch, lr, rate, elapsed)
        return reason

    def _epoch_row(self, epoch: int, lr: float, rate: float, elapsed: float) -> dict[str, Any]:
        """The log.csv row of the epoch's steps so far (collective: every rank calls it)."""
        row = self.meter.summary(self.ctx)
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
        return row

    def _summary_text(self, row: dict[str, Any]) -> str:
        """The progress summary of an epoch row: losses, clusters, collapse monitors, speed."""
        has_clusters = self.cfg.has_clusters

        def num(key: str, fmt: str) -> str:
            return "n/a" if row.get(key) is None else format(row[key], fmt)

        clusters = (
            f", active clusters {row['active_clusters']} (gumbel {row['active_clusters_gumbel']}), "
            f"assigner entropy {num('assigner_entropy', '.3f')}"
            if has_clusters
            else ""
        )
        return (
            f"loss {row['loss']:.4f} (inv {row['inv_loss']:.4f}"
            + (f", cluster {row['cluster_loss']:.4f}" if has_clusters else "")
            + f"){clusters}, backbone std {num('backbone_std', '.3f')}, RankMe {num('backbone_rankme', '.1f')}, "
            f"projection std {num('projection_std', '.3f')}, {row['images_per_s']:.1f} images/s"
        )

    def _finish_epoch(self, epoch: int, lr: float, rate: float, elapsed: float) -> None:
        row = self._epoch_row(epoch, lr, rate, elapsed)
        if not all(torch.isfinite(torch.tensor([row[k] or 0.0 for k in ("loss", "inv_loss", "cluster_loss")]))):
            raise self._non_finite(
                f"the end of epoch {epoch + 1}", {k: row[k] for k in ("loss", "inv_loss", "cluster_loss")}
            )
        self.records.add_epoch(row)
        self.epoch, self.epoch_step = epoch + 1, 0
        self.log(f"epoch {epoch + 1}: " + self._summary_text(row))
        self._check_collapse(row, epoch + 1)

    def _below_thresholds(self, row: dict[str, Any]) -> str:
        """Which backbone monitor is below its --stop-on-collapse threshold ("" when none)."""
        cfg = self.cfg
        std, rank = row.get("backbone_std"), row.get("backbone_rankme")
        if std is not None and std < cfg.collapse_min_std:
            return f"backbone_std (std of the normalised backbone features x sqrt(dim)) = {std:.4g} < --collapse-min-std {cfg.collapse_min_std:g}"
        if rank is not None and rank < cfg.collapse_min_rank:
            return f"backbone_rankme (effective rank of the backbone features) = {rank:.4g} < --collapse-min-rank {cfg.collapse_min_rank:g}"
        return ""

    def _check_collapse(self, row: dict[str, Any], epoch: int) -> None:
        why = self._below_thresholds(row)
        self._collapse_streak = self._collapse_streak + 1 if why else 0
        self._collapse_why = why
        if why and self.cfg.stop_on_collapse:
            self.log(
                f"epoch {epoch}: {why} ({self._collapse_streak} of --collapse-patience {self.cfg.collapse_patience} "
                f"epoch(s) in a row); not saved: {self._on_disk()}"
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

    def _collapse_error(self) -> CollapseError:
        cfg = self.cfg
        return CollapseError(
            f"backbone collapse at the end of epoch {self.epoch}: {self._collapse_why}, {self._collapse_streak} "
            f"epoch(s) in a row (--collapse-patience {cfg.collapse_patience}); --stop-on-collapse stopped the run: "
            f"{self._on_disk()}. log.csv and training.png show every epoch. Lower --lr, enlarge the batch, or set "
            "--collapse-min-std / --collapse-min-rank."
        )

    # ---------------------------------------------------------------- the job
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.setup()
        self.log(self._describe())
        status = "complete"
        with StopSignal() as stop:
            for epoch in range(self.epoch, cfg.epochs):
                if self._max_steps_reached():
                    status = "max_steps"
                    if self._saved is None:  # --max-steps 0 on a new run: the initial state, as asked
                        self.save(complete=False)
                        self.write_logs()
                    break
                reason = self.run_epoch(epoch, stop)
                if self.epoch == epoch + 1:  # the epoch completed
                    last = self.epoch == cfg.epochs
                    if cfg.stop_on_collapse and self._collapse_streak:  # below the thresholds: keep the last good one
                        self.write_logs()
                        if self._collapse_streak >= cfg.collapse_patience or last:
                            status = "collapsed"
                            break
                        if reason != "epoch":
                            status = reason
                            break
                        continue
                    keep = cfg.keep_every > 0 and self.epoch % cfg.keep_every == 0
                    if last or keep or reason != "epoch" or self.epoch % cfg.save_every == 0:
                        self.save(complete=last, keep=keep)
                    self.write_logs()
                    if reason != "epoch" and not last:
                        status = reason
                        break
                else:
                    if not (cfg.stop_on_collapse and self._collapse_streak):
                        self.save(complete=False)
                    self.write_logs()
                    status = reason
                    break
        self.records.close()
        if status == "collapsed":
            self.ctx.barrier()
            raise self._collapse_error()
        backbone = None
        if cfg.export_backbone and status != "interrupted" and self.ctx.is_main:
            backbone = export_backbone(self.raw_model, cfg.export_backbone)
            self._written.append(str(backbone))
        self.ctx.barrier()
        self._report(status, backbone)
        return TrainResult(
            self.out, self.ckpt_path, status, self.epoch, self.step, list(self.records.epochs), backbone, self._partial
        )

    def _report(self, status: str, backbone: Path | None) -> None:
        unsaved = self.cfg.stop_on_collapse and self._collapse_streak > 0  # the state is below the thresholds
        what = {
            "complete": f"training complete ({self.epoch} epochs, {self.step} steps)",
            "interrupted": f"interrupted at epoch {self.epoch + 1}, step {self.step}: "
            + ("" if unsaved else "checkpoint saved; run the same command with --resume to continue exactly"),
            "max_steps": f"stopped at --max-steps {self.cfg.max_steps} (epoch {self.epoch + 1}, step {self.step}); "
            "--resume with a larger --max-steps continues",
        }[status]
        lines = [what]
        if unsaved and status != "complete":
            lines.append(
                f"not saved, the last epoch was below the collapse thresholds ({self._collapse_why}): {self._on_disk()}"
            )
        if CHECKPOINT not in self._written:
            why = (
                f"--max-steps {self.cfg.max_steps} already reached"
                if status == "max_steps"
                else f"--epochs {self.cfg.epochs}, {self.epoch} done"
            )
            lines.append(f"nothing to train ({why}): no checkpoint or log written")
        described = {
            CHECKPOINT: "model + optimiser + RNG state (load with clusiam_fast.models.load_checkpoint)",
            "log.csv": "per-epoch and per-step losses, lr, active clusters, collapse monitors, images/s",
            "training.png": "loss curves, active clusters, collapse monitors, lr",
        }
        written = [n for n in self._written if n != "steps.csv" and (backbone is None or n != str(backbone))]
        if written:
            lines.append(f"outputs in {self.out}/:")
            plain = []
            for name in written:
                if name in described:
                    shown = "log.csv, steps.csv" if name == "log.csv" else name
                    lines.append(f"  {shown}  {described[name]}")
                else:
                    plain.append(name)
            if plain:
                lines.append("  " + ", ".join(plain))
        if backbone is not None:
            lines.append(f"backbone (torchvision state_dict, no fc): {backbone}")
        elif self.cfg.export_backbone:
            lines.append("--export-backbone: not written for an interrupted run (it is written when the run ends)")
        self.log("\n".join(lines))
