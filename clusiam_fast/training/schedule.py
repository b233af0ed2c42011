"""Learning rate: linear scaling with the batch, cosine decay per optimiser step."""

from __future__ import annotations

import math

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
    """SGD over the model's parameter groups (encoder, cluster head, predictor).

    Weight decay applies to every parameter, BatchNorm and biases included, as in the
    published code.
    """
    groups = [
        {"params": params, "name": name, "fix_lr": name == "predictor" and fix_pred_lr}
        for name, params in model.param_groups().items()
        if params
    ]
    return torch.optim.SGD(groups, lr=init_lr, momentum=momentum, weight_decay=weight_decay)
