"""Saving a run: checkpoint.pt and train_config.json, behind the non-finite guard.

Before every save the weights, buffers, optimiser state (and gradients, without a float16
loss scaler) are checked for NaN / inf in one fused reduction: a run that diverged stops
with :class:`NonFiniteLossError` and never overwrites the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..utils.atomic import atomic_write_json
from .checkpoint import save_checkpoint
from .config import NonFiniteLossError, TrainConfig
from .ddp import DistContext
from .position import RunPosition
from .reporting import Reporter
from .run_folder import CHECKPOINT
from .run_setup import RunParts


def count_non_finite(parts: RunParts, ctx: DistContext) -> tuple[int, int]:
    """(tensors holding NaN / inf, tensors checked) over weights, buffers, optimiser state and
    gradients: one fused max-abs reduction and one host sync, summed over the ranks."""
    params = list(parts.raw_model.parameters())
    tensors = params + [b for b in parts.raw_model.buffers() if b.is_floating_point()]
    tensors += [v for state in parts.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim()]
    if not parts.scaler.is_enabled():  # a float16 scaler skips steps with inf gradients: those are expected
        tensors += [p.grad for p in params if p.grad is not None]
    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    if hasattr(torch, "_foreach_norm"):
        norms = torch._foreach_norm(tensors, float("inf"))  # max |x|: NaN and inf propagate, no overflow
    else:  # pragma: no cover - older torch
        norms = [t.detach().abs().amax() for t in tensors]
    bad = (~torch.isfinite(torch.stack([n.float() for n in norms]))).sum().double().reshape(1)
    return int(ctx.all_reduce_sum(bad).item()), len(tensors)


def non_finite_loss(where: str, means: dict[str, float], on_disk: str) -> NonFiniteLossError:
    """The error of a loss that stopped being finite at ``where``; nothing is saved after it."""
    terms = ", ".join(f"{k}={v:.4g}" for k, v in means.items())
    return NonFiniteLossError(
        f"non-finite loss at {where} ({terms}); stopped without saving: {on_disk}. "
        "Lower --lr, check the data, or try --amp-dtype bf16 / no --amp."
    )


class Saver:
    """Writes the run's state into OUT (collective: every rank calls :meth:`save`)."""

    def __init__(
        self, cfg: TrainConfig, ctx: DistContext, parts: RunParts, position: RunPosition, reporter: Reporter
    ) -> None:
        self.cfg, self.ctx, self.parts, self.position, self.reporter = cfg, ctx, parts, position, reporter

    def save(self, complete: bool, keep: bool = False) -> None:
        """Write checkpoint.pt (and train_config.json) unless the state has gone non-finite."""
        cfg, parts, position = self.cfg, self.parts, self.position
        bad, checked = count_non_finite(parts, self.ctx)
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights at {position.where()}: {bad} of {checked} tensors (weights, buffers, optimiser "
                f"state, gradients) hold NaN or inf; refused to save: {position.on_disk()}. "
                "Lower --lr (or --weight-decay), check the data, or try --amp-dtype bf16 / no --amp."
            )
        out = Path(cfg.out)
        save_checkpoint(
            out,
            self.ctx,
            model=parts.raw_model,
            optimizer=parts.optimizer,
            scaler=parts.scaler,
            config={**dataclasses.asdict(cfg), "resume": False, "overwrite": False, "trust_pickle": False},
            epoch=position.epoch,
            epoch_step=position.epoch_step,
            step=position.step,
            generator=parts.generator,
            meter=parts.meter,
            records=parts.records.state_dict(),
            norm_stats=parts.norm_stats,
            complete=complete,
            keep_as=f"epoch_{position.epoch:04d}.pt" if keep else None,
            schedule={"steps": parts.total_steps, "source": parts.schedule_source.split(", ")[0]},
        )
        if self.ctx.is_main:
            atomic_write_json(out / "train_config.json", {**dataclasses.asdict(cfg), "trust_pickle": False})
        position.saved = (position.epoch, position.step)
        for name in (CHECKPOINT, "train_config.json", f"checkpoints/epoch_{position.epoch:04d}.pt" if keep else None):
            if name:
                self.reporter.note(name)
