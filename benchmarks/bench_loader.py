"""Two-view loading speed: the torchvision recipe vs the DALI pipeline (CPU here, GPU when present).

Run: ``pytest benchmarks/bench_loader.py --benchmark-only``. Each round decodes and
augments 384 JPEG patches of 224 px (cut from scikit-image's IHC image, see
``gpu_loader_check.make_patches``) into two 224-px views, the paper's recipe.

- torchvision: PIL decode + ``paper_augmentation`` twice, one process, one thread (per core).
- DALI CPU: ``build_dali_loader(device="cpu")`` with 1 and 2 threads (a whole epoch,
  pipeline build included).
- DALI GPU: ``device="gpu"`` (skipped without CUDA; ``gpu_loader_check.py`` is the
  longer GPU measurement).

``extra_info`` holds images/s and CPU milliseconds per image (process CPU time, which a
busy shared machine distorts less than wall time). Target: DALI CPU with one thread at
least on par with torchvision per core.
"""

from __future__ import annotations

import resource

import pytest
import torch
from bench_utils import SUMMARIES, ratio, record, write_summary
from gpu_loader_check import make_patches

from clusiam_fast.utils.threads import torch_threads

N_IMAGES, CROP, MEAN, STD = 384, 224, (0.60, 0.55, 0.60), (0.20, 0.20, 0.20)
CPU_MS: dict[str, float] = {}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def patches(tmp_path_factory) -> list[str]:
    return make_patches(tmp_path_factory.mktemp("patches"), N_IMAGES, 224)


def _measure(benchmark, key: str, fn, rounds: int = 3) -> None:
    cpu = []

    def timed():
        start = _cpu_seconds()
        fn()
        cpu.append(_cpu_seconds() - start)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
    CPU_MS[key] = 1000.0 * min(cpu[1:] or cpu) / N_IMAGES
    record(
        benchmark,
        key,
        images_per_s=N_IMAGES / benchmark.stats.stats.median,
        cpu_ms_per_image=CPU_MS[key],
        images=N_IMAGES,
        crop=CROP,
    )


def test_torchvision_cpu(benchmark, patches):
    from clusiam_fast.data.augment import paper_augmentation
    from clusiam_fast.data.patch_folder import load_rgb

    benchmark.group = "two-view loading"
    transform = paper_augmentation(CROP, MEAN, STD)

    def epoch():
        for path in patches:
            img = load_rgb(path)
            transform(img), transform(img)

    with torch_threads(1):
        _measure(benchmark, "torchvision/cpu1", epoch)


@pytest.mark.parametrize("threads", [1, 2])
def test_dali_cpu(benchmark, patches, threads):
    pytest.importorskip("nvidia.dali")
    from clusiam_fast.data.dali import build_dali_loader

    benchmark.group = "two-view loading"
    loader = build_dali_loader(patches, batch_size=64, crop_size=CROP, mean=MEAN, std=STD, num_threads=threads)
    _measure(benchmark, f"dali/cpu{threads}", lambda: [None for _ in loader])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dali_gpu(benchmark, patches):
    pytest.importorskip("nvidia.dali")
    from clusiam_fast.data.dali import build_dali_loader

    benchmark.group = "two-view loading"
    loader = build_dali_loader(patches, batch_size=128, crop_size=CROP, mean=MEAN, std=STD, device="gpu", num_threads=4)

    def epoch():
        for _ in loader:
            pass
        torch.cuda.synchronize()

    _measure(benchmark, "dali/gpu", epoch, rounds=5)


def _summary() -> str:
    def per_core(key: str) -> float | None:
        tv, other = CPU_MS.get("torchvision/cpu1"), CPU_MS.get(key)
        return tv / other if tv and other else None

    rows = [
        ("DALI CPU 1 thread vs torchvision, speed (wall)", ratio("torchvision/cpu1", "dali/cpu1"), ">= 1"),
        ("DALI CPU 1 thread vs torchvision, per core (CPU time)", per_core("dali/cpu1"), ">= 1"),
        ("DALI CPU 2 threads vs torchvision 1 core (wall)", ratio("torchvision/cpu1", "dali/cpu2"), "info"),
        ("DALI GPU vs torchvision 1 core (wall)", ratio("torchvision/cpu1", "dali/gpu"), "info"),
    ]
    if all(value is None for _, value, _ in rows):
        return ""
    return write_summary("loader", rows)


SUMMARIES.append(_summary)
