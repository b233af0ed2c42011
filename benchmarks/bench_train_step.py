"""Training-step throughput: SimSiam vs CluSiam (fused and reference cluster loss), CPU.

One full optimiser step of the trainer (``clusiam_fast.training.TrainStep``:
forward of both views, loss, backward, SGD) on resnet18, batch 32, crop 64,
K = 100, random inputs (data loading excluded). Figures in extra_info:
images/s; for CluSiam the whole step's overhead over SimSiam (cluster head +
loss); and, from ``test_cluster_loss_share``, the cluster loss alone (Gumbel
noise, forward, backward at the step's shapes M = 64, D = 2048, K = 100) as a
fraction of a SimSiam step. Target: the fused loss adds < 2% to a SimSiam step.
With CUDA, ``test_train_step_cuda`` times batch 256, crop 224 in bf16 autocast and
fp16 autocast with a GradScaler (both channels_last) and bf16 with contiguous
tensors; ``test_cluster_loss_share_cuda`` times the cluster-loss term at that
step's shapes (M = 512) as a fraction of the bf16 channels_last CluSiam step.
GPU target: < 2%.

Single-threaded (restored afterwards): on the shared 2-core CI machine two
OpenMP threads per step are oversubscribed and several times slower and noisier.
Command: ``pytest benchmarks/bench_train_step.py --benchmark-only``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from bench_utils import RESULTS, SUMMARIES, ratio, record, synced, write_summary

import clusiam_fast
from clusiam_fast.models import build_model
from clusiam_fast.ops import sample_gumbel as gumbel_noise
from clusiam_fast.ops.cluster_loss import cluster_loss
from clusiam_fast.training import TrainConfig, TrainStep
from clusiam_fast.training.schedule import build_optimizer
from clusiam_fast.utils.threads import torch_threads

BATCH, CROP, K = 32, 64, 100
ROUNDS = 7
# On a CUDA machine also: the paper's crop, batch 256; autocast dtype x memory format.
CUDA_BATCH, CUDA_CROP = 256, 224
CUDA = torch.cuda.is_available()
CUDA_VARIANTS = [("bf16", True), ("fp16", True), ("bf16", False)]  # (autocast dtype, channels_last)
CUDA_VARIANT_IDS = ["bf16-channels_last", "fp16-channels_last", "bf16-contiguous"]


def _step(
    method: str, impl: str = "auto", device: str = "cpu", precision: str = "bf16", channels_last: bool = True
) -> TrainStep:
    """CPU: float32. CUDA: autocast ``precision`` (fp16 with a GradScaler, as the trainer does)."""
    cuda = device == "cuda"
    cfg = TrainConfig(
        method=method,
        num_clusters=K,
        crop_size=CUDA_CROP if cuda else CROP,
        batch_size=CUDA_BATCH if cuda else BATCH,
        cluster_loss_impl=impl,
        amp=cuda,
        amp_dtype=precision if cuda else "auto",
        channels_last=channels_last,
    ).resolved()
    torch.manual_seed(0)
    model = build_model(method, num_clusters=K).to(device)
    if cuda and channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, 0.05 * cfg.batch_size / 256, 0.9, 1e-4, cfg.fix_pred_lr)
    scaler = torch.amp.GradScaler(device, enabled=cuda and precision == "fp16")
    gen = torch.Generator(device=device).manual_seed(1)
    return TrainStep(model, opt, scaler, cfg, torch.device(device), gen)


def _views(device: str = "cpu"):
    batch, crop = (CUDA_BATCH, CUDA_CROP) if device == "cuda" else (BATCH, CROP)
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, 3, crop, crop, generator=g).to(device) for _ in range(2))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on 2 shared cores


CASES = [("simsiam", "auto"), ("clusiam", "fused"), ("clusiam", "reference")]


@pytest.fixture(scope="module")
def steps():
    """All three CPU steps built and warmed up front, so no case pays the process's first-use costs."""
    with torch_threads(1):
        built, (v1, v2) = {case: _step(*case) for case in CASES}, _views()
        for _ in range(2):
            for step in built.values():
                step(v1, v2)
    return built


@pytest.mark.parametrize("method,impl", CASES, ids=["simsiam", "clusiam-fused", "clusiam-reference"])
def test_train_step(benchmark, steps, method, impl):
    step, (v1, v2) = steps[(method, impl)], _views()
    benchmark.group = f"train step resnet18 batch {BATCH} crop {CROP} (cpu)"
    benchmark.pedantic(step, args=(v1, v2), rounds=ROUNDS, warmup_rounds=0, iterations=1)
    key = "step/simsiam" if method == "simsiam" else f"step/clusiam-{impl}"
    record(benchmark, key, images_per_s=BATCH / benchmark.stats.stats.median)
    if method != "simsiam" and "step/simsiam" in RESULTS:
        benchmark.extra_info["step_overhead_vs_simsiam"] = ratio(key, "step/simsiam") - 1


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.cuda
@pytest.mark.parametrize("precision,channels_last", CUDA_VARIANTS, ids=CUDA_VARIANT_IDS)
@pytest.mark.parametrize("method,impl", CASES[:2], ids=["simsiam", "clusiam-fused"])
def test_train_step_cuda(benchmark, method, impl, precision, channels_last):
    if impl == "fused" and not clusiam_fast.fused_available("cuda"):
        impl = "reference"
    step, (v1, v2) = _step(method, impl, "cuda", precision, channels_last), _views("cuda")
    run = synced(step, "cuda")
    for _ in range(3):
        run(v1, v2)
    variant = f"{precision}-{'channels_last' if channels_last else 'contiguous'}"
    benchmark.group = f"train step resnet18 batch {CUDA_BATCH} crop {CUDA_CROP} {variant} (cuda)"
    benchmark.pedantic(run, args=(v1, v2), rounds=10, warmup_rounds=0, iterations=1)
    key = f"cuda-step/{method}/{variant}"
    record(benchmark, key, images_per_s=CUDA_BATCH / benchmark.stats.stats.median, impl=impl)
    del step, v1, v2
    torch.cuda.empty_cache()


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_cluster_loss_share(benchmark, impl):
    """The cluster-loss term of a CluSiam step (noise + forward + backward), timed alone."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * BATCH, 2048, generator=g)
    logits = torch.randn(2 * BATCH, K, generator=g, requires_grad=True)
    noise_gen = torch.Generator().manual_seed(1)

    def term():
        loss = cluster_loss(z, logits, gumbel=gumbel_noise(logits, noise_gen), impl=impl)
        loss.backward()
        return loss

    benchmark.group = f"cluster loss term M={2 * BATCH} D=2048 K={K} (cpu)"
    benchmark.pedantic(term, rounds=30, warmup_rounds=3, iterations=5)
    key = f"loss/{impl}"
    record(benchmark, key)
    simsiam = RESULTS.get("step/simsiam")
    if simsiam is None:  # run alone: time a few SimSiam steps here
        step, (v1, v2) = _step("simsiam"), _views()
        times = []
        for _ in range(4):
            start = time.perf_counter()
            step(v1, v2)
            times.append(time.perf_counter() - start)
        simsiam = RESULTS["step/simsiam"] = statistics.median(times[1:])
    benchmark.extra_info["share_of_simsiam_step"] = RESULTS[key] / simsiam


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_cluster_loss_share_cuda(benchmark, impl):
    """The cluster-loss term at the CUDA step's shapes (M = 512), vs the bf16 channels_last CluSiam step."""
    if impl == "fused" and not clusiam_fast.fused_available("cuda"):
        pytest.skip("no fused CUDA kernels")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * CUDA_BATCH, 2048, generator=g).cuda()
    logits = torch.randn(2 * CUDA_BATCH, K, generator=g).cuda().requires_grad_()
    noise_gen = torch.Generator(device="cuda").manual_seed(1)

    def term():
        loss = cluster_loss(z, logits, gumbel=gumbel_noise(logits, noise_gen), impl=impl)
        loss.backward()
        return loss

    benchmark.group = f"cluster loss term M={2 * CUDA_BATCH} D=2048 K={K} (cuda)"
    benchmark.pedantic(synced(term, "cuda"), rounds=30, warmup_rounds=3, iterations=5)
    key = f"cuda-loss/{impl}"
    record(benchmark, key)
    step_key = "cuda-step/clusiam/bf16-channels_last"
    if step_key in RESULTS:
        benchmark.extra_info["share_of_clusiam_bf16_step"] = RESULTS[key] / RESULTS[step_key]


def _summary() -> str:
    rows = _cpu_rows() + _cuda_rows()
    return write_summary("train_step", rows) if rows else ""


def _cuda_rows() -> list:
    rows = []
    step = "cuda-step/clusiam/bf16-channels_last"
    for impl in ("fused", "reference"):
        value = ratio(f"cuda-loss/{impl}", step)
        if value is not None:
            rows.append(
                (
                    f"CUDA: cluster loss term ({impl}), % of a CluSiam bf16 step",
                    100 * value,
                    "< 2 %" if impl == "fused" else "",
                )
            )
    for variant in CUDA_VARIANT_IDS:
        value = ratio(f"cuda-step/clusiam/{variant}", f"cuda-step/simsiam/{variant}")
        if value is not None:
            rows.append((f"CUDA: CluSiam / SimSiam step ({variant})", value, "head + loss"))
    for variant in CUDA_VARIANT_IDS[1:]:
        value = ratio(f"cuda-step/clusiam/{variant}", step)
        if value is not None:
            rows.append((f"CUDA: CluSiam step {variant} / bf16-channels_last", value, ""))
    return rows


def _cpu_rows() -> list:
    if "step/simsiam" not in RESULTS:
        return []

    def percent(num: str) -> float | None:
        value = ratio(num, "step/simsiam")
        return None if value is None else 100 * value

    rows = [
        ("cluster loss term (fused), % of a SimSiam step", percent("loss/fused"), "< 2 %"),
        ("cluster loss term (reference), % of a SimSiam step", percent("loss/reference"), ""),
        ("CluSiam step (fused) / SimSiam step", ratio("step/clusiam-fused", "step/simsiam"), "head + loss; noisy"),
        ("CluSiam step (reference) / SimSiam step", ratio("step/clusiam-reference", "step/simsiam"), ""),
    ]
    return rows


SUMMARIES.append(_summary)
