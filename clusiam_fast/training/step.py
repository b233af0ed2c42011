"""One optimisation step: forward both views (autocast), loss in float32, backward, SGD, the method's after-step.

Shared by the training loop and ``benchmarks/bench_train_step.py``.
"""

from __future__ import annotations

import contextlib

import torch

from ..models import unwrap
from .config import TrainConfig
from .monitors import StepMonitors, step_monitors
from .objective import LossTerms, training_loss


def resolve_amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None without --amp. CPU: bfloat16. CUDA: bf16 where supported ("auto"), else fp16."""
    if not cfg.amp:
        return None
    if device.type == "cpu":
        if cfg.amp_dtype == "fp16":
            raise ValueError("--amp-dtype fp16 is not supported on the CPU; use bf16 (the default there)")
        return torch.bfloat16
    if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class TrainStep:
    """Callable ``(view1, view2) -> (LossTerms, StepMonitors)`` that also updates the model.

    The monitors (projection and backbone std, backbone features for RankMe) come from
    the forward the loss used; they stay on the device.

    ``model`` may be wrapped in DistributedDataParallel; the loss then computes the
    cluster centroids over the global batch (``process_group="default"``). The method
    itself is read through its interface: ``invariance_loss`` and ``after_optimizer_step``.
    """

    def __init__(
        self,
        model,
        optimizer,
        scaler,
        cfg: TrainConfig,
        device: torch.device,
        generator: torch.Generator | None,
        distributed: bool = False,
    ) -> None:
        self.model, self.optimizer, self.scaler, self.cfg, self.device = model, optimizer, scaler, cfg, device
        self.generator = generator
        self.amp_dtype = resolve_amp_dtype(cfg, device)
        self.group = "default" if distributed else None
        self.memory_format = (
            torch.channels_last if device.type == "cuda" and cfg.channels_last else torch.contiguous_format
        )

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[LossTerms, StepMonitors]:
        x1, x2 = self._to_device(view1), self._to_device(view2)
        method = unwrap(self.model)  # the bare model, whose methods are the method's interface
        with autocast_context(self.device, self.amp_dtype):
            out = self.model(x1, x2)
        # Outside autocast: the invariance and cluster losses run in float32.
        terms = training_loss(
            out,
            method.invariance_loss(out, self.cfg.inv_reduction),
            alpha=self.cfg.alpha,
            tau=self.cfg.tau,
            gumbel=self.cfg.gumbel,
            generator=self.generator,
            impl=self.cfg.cluster_loss_impl,
            process_group=self.group,
        )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        method.after_optimizer_step()
        return terms, step_monitors(out)
