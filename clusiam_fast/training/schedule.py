"""Learning rate: linear scaling with the batch, cosine decay per optimiser step, and the steps it spans.

The cosine spans ``schedule_steps`` when given, else the run's length, min(``max_steps``,
epochs x steps per epoch). A resumed run keeps the checkpoint's span unless it asks for more
steps than that: then the cosine spans the new length from the resume step on, as in a run
started with those settings (the rule of Hugging Face's Trainer, whose schedule is a function
of the step and the run's total), so the added steps never train at lr 0. A resume asking for
fewer epochs or steps than were done is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """The linear scaling rule of SimSiam and CluSiam: lr = base_lr * batch / 256."""
    return base_lr * global_batch / 256


def cosine_lr(init_lr: float, step: int, total_steps: int) -> float:
    """init_lr * 0.5 * (1 + cos(pi * step / total_steps)); step 0 gets init_lr.

    The published code decays once per epoch; per step is the same curve, smooth.
    """
    if total_steps <= 0:
        return init_lr
    return init_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def set_lr(optimizer: torch.optim.Optimizer, lr: float, init_lr: float) -> None:
    """Set every group's lr; groups marked ``fix_lr`` (the predictor under --fix-pred-lr) keep ``init_lr``."""
    for group in optimizer.param_groups:
        group["lr"] = init_lr if group.get("fix_lr", False) else lr


def build_optimizer(model, init_lr: float, momentum: float, weight_decay: float, fix_pred_lr: bool) -> torch.optim.SGD:
    """SGD over the model's parameter groups with the method's lr policy (``model.optimizer_groups``).

    Weight decay applies to every parameter, BatchNorm and biases included, as in the
    published code.
    """
    return torch.optim.SGD(
        model.optimizer_groups(fix_pred_lr), lr=init_lr, momentum=momentum, weight_decay=weight_decay
    )


def run_length(epochs: int, max_steps: int | None, per_epoch: int) -> tuple[int, str]:
    """The run's optimiser steps, min(--max-steps, epochs x steps/epoch), and which flag sets them
    (--max-steps 0, the initial checkpoint, spans the epochs)."""
    run_steps = epochs * per_epoch
    if max_steps and max_steps < run_steps:
        return max_steps, f"--max-steps {max_steps}"
    return run_steps, f"--epochs {epochs} x {per_epoch} steps"


def check_resume_length(cfg: Any, ckpt: dict[str, Any], per_epoch: int, path: Path) -> None:
    """--resume asking for fewer epochs or steps than ``ckpt`` has done: one line (ValueError)."""
    done, epochs = ckpt["step"], ckpt["epoch"]
    mid_epoch = 0 < ckpt["epoch_step"] < per_epoch
    if cfg.max_steps is not None and cfg.max_steps < done:
        asked = f"--max-steps {cfg.max_steps}"
    elif cfg.epochs < epochs or (cfg.epochs == epochs and mid_epoch):
        asked = f"--epochs {cfg.epochs}"
    else:
        return
    raise ValueError(
        f"--resume: {path} has done {done} steps ({epochs} epoch(s)"
        + (f" and {ckpt['epoch_step']} steps of epoch {epochs + 1}" if mid_epoch else "")
        + f"), more than this run asks for ({asked}): give a larger --epochs / --max-steps to continue it "
        "(or leave them out to keep the saved ones)"
    )


def resolve_schedule(cfg: Any, per_epoch: int, ckpt: dict[str, Any] | None) -> tuple[int, str, str | None]:
    """(steps the cosine spans, what set them, a line to show or None) for ``cfg`` (a resolved
    TrainConfig) and, on resume, the checkpoint; see the module docstring for the rule."""
    run_steps, why = run_length(cfg.epochs, cfg.max_steps, per_epoch)
    saved = ckpt.get("schedule") if ckpt is not None else None
    if cfg.schedule_steps is not None and (ckpt is None or cfg.schedule_steps != ckpt["config"].get("schedule_steps")):
        steps, source = cfg.schedule_steps, "--schedule-steps" + (", replacing the checkpoint's" if ckpt else "")
    elif ckpt is None:
        return run_steps, why, None
    elif not saved:  # a checkpoint from before the schedule was saved: it spanned --epochs
        return cfg.epochs * per_epoch, f"--epochs {cfg.epochs} x {per_epoch} steps", None
    elif cfg.schedule_steps is not None or run_steps <= saved["steps"]:  # an explicit span is used as given
        steps, source = saved["steps"], f"{saved['source']}, kept from the checkpoint"
    else:
        step, init_lr = ckpt["step"], scaled_lr(cfg.lr, cfg.batch_size)
        return (
            run_steps,
            f"{why} (extended from {saved['steps']} at step {step})",
            f"--resume: this run asks for {run_steps} steps ({why}), more than the {saved['steps']} the "
            f"checkpoint's cosine spans (its lr at step {step}: {cosine_lr(init_lr, step, saved['steps']):.4g}); "
            f"the cosine now spans {run_steps} steps, as in a run started with these settings: lr "
            f"{cosine_lr(init_lr, step, run_steps):.4g} at step {step}, 0 at step {run_steps} (kept by later "
            "resumes; --schedule-steps N sets another span)",
        )
    if steps < run_steps:  # only an explicit --schedule-steps ends before the run: say so
        return (
            steps,
            source,
            (
                f"note: the cosine spans {steps} steps ({source}) but the run has {run_steps} ({why}): steps "
                f"{steps + 1} to {run_steps} train at lr 0"
            ),
        )
    return steps, source, None
