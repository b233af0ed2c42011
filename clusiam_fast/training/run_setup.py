"""Set-up and resume: everything a run builds before its first step.

OUT is looked at on global rank 0 only (:func:`on_main`), which hands the checkpoint to
resume to the other ranks; nothing is written to OUT before every check has passed, except
norm_stats.json for a new run.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..data.resolve import DataArg
from ..models import build_model, model_config
from ..models.factory import MODEL_KEYS
from ..utils.atomic import remove_stale_temps
from .checkpoint import restore_rank_state
from .config import TrainConfig, check_out_outside_data
from .data_record import record_pretrain_data
from .ddp import DistContext
from .loader import DataSource, build_train_loader, open_source
from .monitors import EpochMeter
from .norm_stats import load_or_compute_stats
from .position import RunPosition
from .records import RunRecords
from .run_folder import CHECKPOINT, open_run_folder
from .schedule import build_optimizer, check_resume_length, resolve_schedule, scaled_lr
from .step import TrainStep, resolve_amp_dtype
from .sync_bn import convert_batchnorm


@dataclass
class RunParts:
    """What set-up builds: the data, the model and everything that steps it."""

    source: DataSource
    norm_stats: dict[str, Any]
    raw_model: torch.nn.Module
    model: torch.nn.Module  # raw_model, wrapped in DistributedDataParallel under torchrun
    loader: Any
    steps_per_epoch: int
    total_steps: int  # steps the cosine spans
    schedule_source: str  # what set total_steps
    init_lr: float
    optimizer: torch.optim.Optimizer
    generator: torch.Generator  # the Gumbel noise's
    scaler: torch.amp.GradScaler
    trainstep: TrainStep
    meter: EpochMeter
    records: RunRecords


def close_loader(loader: Any) -> None:
    """Stop the loader's workers (loaders without workers have no ``close``)."""
    close = getattr(loader, "close", None)
    if close is not None:
        close()


def set_up_run(
    cfg: TrainConfig,
    ctx: DistContext,
    position: RunPosition,
    log: Callable[[str], None],
    note: Callable[[str], None],
    data: DataArg | None = None,
) -> RunParts:
    """Check OUT, read the checkpoint to resume, then build data, model and optimiser and, on
    resume, restore their state and ``position``. ``log`` shows a line, ``note`` records a file
    written into OUT (see :class:`.reporting.Reporter`). ``data``: ``cfg.data`` resolved already
    (else it is resolved here)."""
    out = Path(cfg.out)
    ckpt = on_main(ctx, lambda: load_resume(cfg, ctx, out, log))
    source = open_source(cfg.data if data is None else data, cfg.reader, cfg.decode_device)
    sizes = ctx.gather_objects(len(source))
    if len(set(sizes)) > 1:
        raise ValueError(
            f"DATA {cfg.data} holds {', '.join(map(str, sizes))} patches on ranks 0..{len(sizes) - 1}: "
            "every node must see the same data (the same files, or a copy of them)"
        )
    on_main(ctx, lambda: check_out_outside_data(out, source.path, source.kind))
    _prepare_out(out, ctx, log)
    if ctx.is_main:
        note(record_pretrain_data(out, source).name)
    norm_stats = _norm_stats(cfg, ctx, source, ckpt, log, note)
    raw_model, model = _build_model(cfg, ctx, ckpt)
    loader = build_train_loader(source, cfg, ctx, norm_stats["mean"], norm_stats["std"])
    try:
        parts = _build_training(cfg, ctx, source, norm_stats, raw_model, model, loader, ckpt, log)
        if ckpt is not None:
            _restore(parts, ckpt, cfg, ctx, position, log)
        parts.records.start(position.step)
    except BaseException:  # the caller closes the loader of a run that was set up; this one was not
        close_loader(loader)
        raise
    return parts


# ---------------------------------------------------------------- OUT and the checkpoint to resume
def _picklable(error: Exception) -> Exception:
    """``error``, or a RuntimeError with its message when it cannot cross to the other ranks."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def on_main(ctx: DistContext, job: Callable[[], Any]) -> Any:
    """``job()`` run on global rank 0 only, its result (or its error, raised) on every rank.

    OUT is rank 0's alone: other nodes need not see its disk, and no rank waits in a
    collective for one that failed a check.
    """
    outcome: tuple[bool, Any] | None = None
    if ctx.is_main:
        try:
            outcome = (True, job())
        except Exception as error:
            outcome = (False, error if not ctx.distributed else _picklable(error))
    ok, value = ctx.broadcast_object(outcome)
    if not ok:
        raise value
    return value


def check_resumable(ckpt: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """The settings a resumed run must keep: the batch size and the model's (the method is
    checked by :func:`~.run_folder.open_run_folder`)."""
    saved = ckpt["config"]
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


def load_resume(cfg: TrainConfig, ctx: DistContext, out: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint ``cfg`` continues (None for a new run), after checking OUT and the settings."""
    ckpt = open_run_folder(out, resume=cfg.resume, trust_pickle=cfg.trust_pickle, method=cfg.method)
    path = out / CHECKPOINT
    if ckpt is None:
        if path.exists() and not cfg.resume and not cfg.overwrite:
            raise FileExistsError(
                f"{path} exists: pass --resume to continue that run, --overwrite to start it again, "
                "or choose another --out"
            )
        if cfg.resume:
            log(f"--resume: no checkpoint in {out} yet, starting a new run")
        return None
    check_resumable(ckpt, cfg, path)
    if ckpt.get("world_size", 1) != ctx.world:
        log(
            f"--resume: the checkpoint was written by {ckpt.get('world_size')} process(es), this run has "
            f"{ctx.world}: the data order differs from an uninterrupted run"
        )
    return ckpt


def _prepare_out(out: Path, ctx: DistContext, log: Callable[[str], None]) -> None:
    """Create OUT and delete temporary files that killed writes of an earlier run left there."""
    if not ctx.is_main:
        return
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temps(out) + remove_stale_temps(out / "checkpoints")
    if stale:
        log(f"removed {len(stale)} temporary file(s) left by interrupted writes in {out}")


# ---------------------------------------------------------------- data, model, optimiser
def _norm_stats(
    cfg: TrainConfig,
    ctx: DistContext,
    source: DataSource,
    ckpt: dict[str, Any] | None,
    log: Callable[[str], None],
    note: Callable[[str], None],
) -> dict[str, Any]:
    """The checkpoint's normalisation statistics on resume, else OUT/norm_stats.json's (computed once)."""
    if ckpt is not None:
        norm_stats = ckpt["norm_stats"]  # the model was trained with these: keep them
        if norm_stats.get("fingerprint") != source.fingerprint:
            log(
                f"--resume: DATA {source.path} is not the data the checkpoint was trained on; "
                "continuing with the checkpoint's normalisation statistics"
            )
        return norm_stats
    stats = None
    if ctx.is_main:
        stats = load_or_compute_stats(
            Path(cfg.out),
            source,
            max_images=cfg.max_stat_images,
            seed=cfg.seed,
            workers=cfg.workers,
            progress=cfg.progress,
        )
        note("norm_stats.json")
    return ctx.broadcast_object(stats)


def _build_model(
    cfg: TrainConfig, ctx: DistContext, ckpt: dict[str, Any] | None
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model, the model as stepped: wrapped in DistributedDataParallel under torchrun)."""
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
    wrapped = (
        DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
        if ctx.distributed
        else model
    )
    return model, wrapped


def _build_training(
    cfg: TrainConfig,
    ctx: DistContext,
    source: DataSource,
    norm_stats: dict[str, Any],
    raw_model: torch.nn.Module,
    model: torch.nn.Module,
    loader: Any,
    ckpt: dict[str, Any] | None,
    log: Callable[[str], None],
) -> RunParts:
    """Schedule, optimiser, scaler, Gumbel generator, step, meters and records around ``loader``."""
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"data {source.path}: {len(source)} images make no full batch of {cfg.batch_size} "
            f"over {ctx.world} process(es); lower --batch-size or add images"
        )
    if ckpt is not None:
        check_resume_length(cfg, ckpt, steps_per_epoch, Path(cfg.out) / CHECKPOINT)
    total_steps, schedule_source, notice = resolve_schedule(cfg, steps_per_epoch, ckpt)
    if notice:
        log(notice)
    init_lr = scaled_lr(cfg.lr, cfg.batch_size)
    if init_lr > torch.finfo(torch.float32).max:
        raise ValueError(
            f"--lr {cfg.lr:g}: the run's lr, {cfg.lr:g} * {cfg.batch_size}/256 = {init_lr:.4g}, does not fit "
            "in float32 (the weights' type); use a much smaller --lr"
        )
    optimizer = build_optimizer(raw_model, init_lr, cfg.momentum, cfg.weight_decay, cfg.fix_pred_lr)
    generator = torch.Generator(device=ctx.device)
    generator.manual_seed(cfg.seed + 1_000_003 * (ctx.rank + 1))
    fp16 = resolve_amp_dtype(cfg, ctx.device) == torch.float16
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=fp16)  # only float16 needs loss scaling
    return RunParts(
        source=source,
        norm_stats=norm_stats,
        raw_model=raw_model,
        model=model,
        loader=loader,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        schedule_source=schedule_source,
        init_lr=init_lr,
        optimizer=optimizer,
        generator=generator,
        scaler=scaler,
        trainstep=TrainStep(model, optimizer, scaler, cfg, ctx.device, generator, ctx.distributed),
        meter=EpochMeter(
            raw_model.num_clusters, ctx.device, feature_dim=raw_model.feature_dim, window=cfg.rankme_window
        ),
        records=RunRecords(Path(cfg.out), tensorboard=cfg.tensorboard, enabled=ctx.is_main),
    )


def _restore(
    parts: RunParts,
    ckpt: dict[str, Any],
    cfg: TrainConfig,
    ctx: DistContext,
    position: RunPosition,
    log: Callable[[str], None],
) -> None:
    """Optimiser, scaler, RNG, meters, records and ``position`` as the checkpoint left them."""
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    for group in parts.optimizer.param_groups:  # flags given now override the saved hyper-parameters
        group["momentum"], group["weight_decay"] = cfg.momentum, cfg.weight_decay
    parts.scaler.load_state_dict(ckpt["scaler"])
    ranks = ckpt["ranks"]
    restore_rank_state(ranks[ctx.rank if ctx.rank < len(ranks) else 0], parts.generator, parts.meter)
    parts.records.load_state_dict(ckpt["records"])
    position.epoch, position.epoch_step, position.step = ckpt["epoch"], ckpt["epoch_step"], ckpt["step"]
    position.saved = (position.epoch, position.step)
    if position.epoch_step >= parts.steps_per_epoch:  # written at the very end of an epoch
        position.epoch, position.epoch_step = position.epoch + 1, 0
    log(
        f"resumed {position.ckpt_path}: {position.epoch} epoch(s) and {position.epoch_step} step(s) of epoch "
        f"{position.epoch + 1} done (step {position.step})"
    )
