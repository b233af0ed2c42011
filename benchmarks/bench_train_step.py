"""Training-step throughput: SimSiam vs CluSiam (fused and reference cluster loss), CPU.

One full optimiser step of the trainer (``clusiam_fast.training.TrainStep``:
forward of both views, loss, backward, SGD) on resnet18, batch 32, crop 64,
K = 100, random inputs (data loading excluded). Figures in extra_info:
images/s; for CluSiam the whole step's overhead over SimSiam (cluster head +
loss); and, from ``test_cluster_loss_share``, the cluster loss alone (Gumbel
noise, forward, backward at the step's shapes M = 64, D = 2048, K = 100) as a
fraction of a SimSiam step. Target: the fused loss adds < 2% to a SimSiam step.
With CUDA, ``test_train_step_cuda`` times batch 256, crop 224, bf16 autocast.

Single-threaded (restored afterwards): on the shared 2-core CI machine two
OpenMP threads per step are oversubscribed and several times slower and noisier.
Command: ``pytest benchmarks/bench_train_step.py --benchmark-only``.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import clusiam_fast
from bench_utils import RESULTS, SUMMARIES, ratio, record, synced, write_summary
from clusiam_fast.models import build_model
from clusiam_fast.training import TrainConfig, TrainStep
from clusiam_fast.ops import sample_gumbel as gumbel_noise
from clusiam_fast.ops.cluster_loss import cluster_loss
from clusiam_fast.training.schedule import build_optimizer
from clusiam_fast.utils.threads import torch_threads

BATCH, CROP, K = 32, 64, 100
ROUNDS = 7
# On a CUDA machine also: the paper's crop, batch 256, bf16 autocast, channels_last.
CUDA_BATCH, CUDA_CROP = 256, 224
CUDA = torch.cuda.is_available()


def _step(method: str, impl: str = "auto", device: str = "cpu") -> TrainStep:
    cuda = device == "cuda"
    cfg = TrainConfig(method=method, num_clusters=K, crop_size=CUDA_CROP if cuda else CROP,
                      batch_size=CUDA_BATCH if cuda else BATCH, cluster_loss_impl=impl, amp=cuda).resolved()
    torch.manual_seed(0)
    model = build_model(method, num_clusters=K).to(device)
    if cuda:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, 0.05 * cfg.batch_size / 256, 0.9, 1e-4, cfg.fix_pred_lr)
    scaler = torch.amp.GradScaler(device, enabled=False)
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
@pytest.mark.parametrize("method,impl", CASES[:2], ids=["simsiam", "clusiam-fused"])
def test_train_step_cuda(benchmark, method, impl):
    if impl == "fused" and not clusiam_fast.fused_available("cuda"):
        impl = "reference"
    step, (v1, v2) = _step(method, impl, "cuda"), _views("cuda")
    run = synced(step, "cuda")
    for _ in range(3):
        run(v1, v2)
    benchmark.group = f"train step resnet18 batch {CUDA_BATCH} crop {CUDA_CROP} bf16 (cuda)"
    benchmark.pedantic(run, args=(v1, v2), rounds=10, warmup_rounds=0, iterations=1)
    key = f"cuda-step/{method}"
    record(benchmark, key, images_per_s=CUDA_BATCH / benchmark.stats.stats.median, impl=impl)


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


def _summary() -> str:
    if "step/simsiam" not in RESULTS:
        return ""
    def percent(num: str) -> float | None:
        value = ratio(num, "step/simsiam")
        return None if value is None else 100 * value

    rows = [
        ("cluster loss term (fused), % of a SimSiam step", percent("loss/fused"), "< 2 %"),
        ("cluster loss term (reference), % of a SimSiam step", percent("loss/reference"), ""),
        ("CluSiam step (fused) / SimSiam step", ratio("step/clusiam-fused", "step/simsiam"), "head + loss; noisy"),
        ("CluSiam step (reference) / SimSiam step", ratio("step/clusiam-reference", "step/simsiam"), ""),
    ]
    if "cuda-step/simsiam" in RESULTS:
        rows.append(("CUDA: CluSiam step / SimSiam step (batch 256, crop 224, bf16)",
                     ratio("cuda-step/clusiam", "cuda-step/simsiam"), "head + loss"))
    return write_summary("train_step", rows)


SUMMARIES.append(_summary)
