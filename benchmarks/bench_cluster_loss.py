"""Cluster loss: reference vs torch.compile(reference) vs fused, forward / backward / both.

Shapes (M, K, D) of the targets; float32, noise passed in. Beside them one plain
torch.mm of M x D by D x K: the product the backward cannot avoid (the floor).
Peak memory in extra_info. Targets (2-core CPU): fused forward+backward >= 3x the
reference at (1024, 100, 2048) and (4096, 1000, 2048) and within 1.3x of the mm;
forward >= 6x the reference's at (1024, 100, 2048). GPU: >= 10x at (1024, 100, 2048).

Against the hardware (the roofline column): the backward cannot avoid one M x K x D product,
2 MKD FLOPs (16.8 GFLOP at (4096, 1000, 2048)); "hardware floor/fused" is that product's time at
the device's float32 peak (the data sheet's for known GPUs, one measured large mm on a CPU:
clusiam_fast/training/flops.py) over the fused forward + backward. GPU targets at (4096, 1000, 2048):
fused forward + backward <= 0.40 ms and <= 1.15x one mm of the same shape.
"""

from __future__ import annotations

import pytest
import torch
from bench_utils import RESULTS, SUMMARIES, peak_memory_bytes, ratio, record, synced, write_summary

import clusiam_fast as cf
from clusiam_fast.ops.cluster_loss_reference import sample_gumbel
from clusiam_fast.training.flops import peak_flops

SHAPES = [(1024, 100, 2048), (1024, 10, 2048), (4096, 1000, 2048)]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cf.fused_available("cuda") else [])
IMPLS = ["reference", "compiled", "fused"]
PASSES = ["forward", "backward", "both"]
_compiled_reference = torch.compile(cf.reference.cluster_loss)


def _loss_fn(impl):
    if impl == "compiled":
        return lambda z, l, g: _compiled_reference(z, l, gumbel=g)
    return lambda z, l, g: cf.cluster_loss(z, l, gumbel=g, impl=impl)


def _inputs(shape, device):
    M, K, D = shape
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(M, D, generator=gen).to(device)
    logits = torch.randn(M, K, generator=gen).to(device).requires_grad_()
    return z, logits, sample_gumbel(logits)


def _rounds(shape, device):
    return 5 if (shape[0] >= 4096 and device == "cpu") else 20


def _key(device, shape, impl, pass_):
    return f"{device}/{'x'.join(map(str, shape))}/{impl}/{pass_}"


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device", DEVICES)
def test_cluster_loss(benchmark, device, shape, impl, pass_):
    z, logits, gumbel = _inputs(shape, device)
    loss_fn = _loss_fn(impl)
    benchmark.group = f"cluster_loss {device} {shape} {pass_}"
    if pass_ == "forward":

        def target():
            with torch.no_grad():
                return loss_fn(z, logits, gumbel)

        run = synced(target, device)
        benchmark.pedantic(run, rounds=_rounds(shape, device), warmup_rounds=2)
    elif pass_ == "both":
        run = synced(lambda: loss_fn(z, logits, gumbel).backward(), device)
        benchmark.pedantic(run, rounds=_rounds(shape, device), warmup_rounds=2)
    else:  # backward only: a fresh graph from an untimed forward each round

        def setup():
            return (loss_fn(z, logits, gumbel),), {}

        run = synced(lambda loss: loss.backward(), device)
        benchmark.pedantic(run, setup=setup, rounds=_rounds(shape, device), warmup_rounds=2)
    peak = peak_memory_bytes(lambda: loss_fn(z, logits, gumbel).backward(), device) if pass_ == "both" else None
    record(benchmark, _key(device, shape, impl, pass_), peak_memory_mb=None if peak is None else peak / 2**20)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("device", DEVICES)
def test_mm_floor(benchmark, device, shape):
    M, K, D = shape
    z = torch.randn(M, D, device=device)
    w = torch.randn(K, D, device=device)
    benchmark.group = f"cluster_loss {device} {shape} both"
    benchmark.pedantic(synced(lambda: torch.mm(z, w.t()), device), rounds=_rounds(shape, device) * 2, warmup_rounds=2)
    record(benchmark, _key(device, shape, "mm", "floor"))


def _summary() -> str:
    rows = []
    for device in DEVICES:
        for shape in SHAPES:
            k = lambda impl, p, device=device, shape=shape: _key(device, shape, impl, p)
            s = "x".join(map(str, shape))
            speed_target = (
                ">= 10"
                if device == "cuda" and shape == (1024, 100, 2048)
                else (">= 3" if device == "cpu" and shape != (1024, 10, 2048) else "")
            )
            rows.append(
                (
                    f"{device} {s} reference/fused (fwd+bwd)",
                    ratio(k("reference", "both"), k("fused", "both")),
                    speed_target,
                )
            )
            rows.append(
                (f"{device} {s} compiled-ref/fused (fwd+bwd)", ratio(k("compiled", "both"), k("fused", "both")), "")
            )
            rows.append(
                (
                    f"{device} {s} reference/fused (forward)",
                    ratio(k("reference", "forward"), k("fused", "forward")),
                    ">= 6" if device == "cpu" and shape == (1024, 100, 2048) else "",
                )
            )
            rows.append(
                (
                    f"{device} {s} reference/fused (backward)",
                    ratio(k("reference", "backward"), k("fused", "backward")),
                    "",
                )
            )
            big_gpu = device == "cuda" and shape == (4096, 1000, 2048)
            rows.append(
                (
                    f"{device} {s} fused(fwd+bwd)/mm floor",
                    ratio(k("fused", "both"), k("mm", "floor")),
                    "<= 1.3" if device == "cpu" and shape != (1024, 10, 2048) else ("<= 1.15" if big_gpu else ""),
                )
            )
            rows.extend(_roofline_rows(device, shape, k("fused", "both"), "<= 0.40" if big_gpu else ""))
    if not any(value is not None for _, value, _ in rows):
        return ""
    return write_summary("cluster_loss", rows)


def _roofline_rows(device: str, shape: tuple[int, int, int], fused_key: str, ms_target: str) -> list[tuple]:
    """The fused fwd+bwd in ms, and the backward's unavoidable product at the device's fp32 peak over it."""
    fused = RESULTS.get(fused_key)
    if fused is None:
        return []
    M, K, D = shape
    peak, _ = peak_flops(torch.device(device), torch.float32)
    s = "x".join(map(str, shape))
    return [
        (f"{device} {s} fused fwd+bwd (ms)", fused * 1e3, ms_target),
        (f"{device} {s} hardware floor/fused (fwd+bwd)", 2 * M * K * D / peak / fused, ""),
    ]


SUMMARIES.append(_summary)
