"""Model FLOP utilisation (MFU): the FLOPs a training step needs against what the hardware can do.

MFU = (FLOPs of one two-view sample's forward + backward) x samples/s / peak FLOP/s of the devices.
The FLOPs are counted once per run by ``torch.utils.flop_counter`` on a meta-device copy of the
model (no data, no device time). The peak is the data sheet's dense figure for the GPUs we know
(H100, H200, A100) and, on a CPU or an unknown GPU, the rate of one large ``mm`` in the step's
dtype measured here, so a CPU run has an MFU too. Convolutions dominate a ResNet step; MFU near
10 % is usual for them, and the figure tells how far a step is from the hardware, not from the
reference implementation.
"""

from __future__ import annotations

import copy
import time
from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense peaks in TFLOP/s (NVIDIA data sheets, SXM parts; H200 = H100 SXM compute).
GPU_PEAK_TFLOPS = {
    "H200": {torch.float32: 66.9, torch.bfloat16: 989.4, torch.float16: 989.4},
    "H100": {torch.float32: 66.9, torch.bfloat16: 989.4, torch.float16: 989.4},
    "A100": {torch.float32: 19.5, torch.bfloat16: 312.0, torch.float16: 312.0},
}


def step_flops_per_sample(model: torch.nn.Module, crop_size: int, batch: int = 2) -> float:
    """FLOPs of forward + backward of ``model(x1, x2)`` for one two-view sample, counted on the meta device."""
    meta = _without_batchnorm(copy.deepcopy(model)).to("meta")
    meta.train()
    x = torch.empty(batch, 3, crop_size, crop_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = meta(x, x.clone())
        loss = sum(t.float().sum() for t in out if isinstance(t, torch.Tensor) and t.requires_grad)
        loss.backward()
    return counter.get_total_flops() / batch


def _without_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Identities for the BatchNorm layers: the synchronised ones (torchrun) all-reduce statistics, which
    meta tensors cannot, and the counter counts no normalisation FLOPs anyway."""
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm):
            setattr(module, name, torch.nn.Identity())
        else:
            _without_batchnorm(child)
    return module


@cache
def measured_mm_flops(device: str, dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """FLOP/s of the best of ``repeats`` (n x n) @ (n x n) products on ``device`` in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: thread pool, cuBLAS handle
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / max(best, 1e-9)


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s of one device for ``dtype``, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name and dtype in peaks:
                return peaks[dtype] * 1e12, f"{key} data sheet, dense {_dtype_name(dtype)}"
    # The faster of the step's dtype and float32: a CPU without native bf16 runs bf16 products slower than
    # float32 ones, and the hardware's peak is the faster.
    best = max((dtype, torch.float32), key=lambda d: measured_mm_flops(str(device), d))
    return measured_mm_flops(str(device), best), f"one measured {_dtype_name(best)} mm on {device.type}"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class MfuMeter:
    """Turns samples/s into MFU for one run: ``meter(rate)`` -> fraction of the devices' peak."""

    def __init__(
        self, model: torch.nn.Module, crop_size: int, device: torch.device, dtype: torch.dtype | None, world: int
    ):
        self.peak, self.peak_source = peak_flops(device, dtype or torch.float32)
        self.world = world
        try:
            self.flops_per_sample: float | None = step_flops_per_sample(model, crop_size)
        except Exception as error:  # a model the meta device cannot run: no MFU, training goes on
            self.flops_per_sample, self.error = None, f"{type(error).__name__}: {error}"

    def __call__(self, samples_per_s: float) -> float | None:
        if self.flops_per_sample is None:
            return None
        return self.flops_per_sample * samples_per_s / (self.peak * self.world)

    def describe(self) -> str:
        if self.flops_per_sample is None:
            return f"MFU: not available (the FLOPs of a step could not be counted on the meta device: {self.error})"
        return (
            f"MFU: {self.flops_per_sample / 1e9:.2f} GFLOP per two-view sample (forward + backward) against "
            f"{self.peak / 1e12:.3g} TFLOP/s per device ({self.peak_source})"
        )
