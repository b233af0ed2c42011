"""Patches per second read from the CMU-1-Small-Region slide: cuCIM vs OpenSlide vs tifffile.

Workload: the slide's 117 non-overlapping 224-px level-0 patches (what the tiler and
``SlidePatchDataset`` read), each round on a freshly opened reader, so no backend serves
a round from a tile cache filled by the previous one. Single-threaded and multi-threaded
(``THREADS`` = the CPU count, at most 8) for every backend; cuCIM batched uses its native
multi-location ``read_region``. ``extra_info`` holds patches/s, and the cuCIM batched
multi-threaded test adds ``cucim_over_openslide``: its speed over OpenSlide's per-region
reads, measured in the same test (target >= 3). A last test does the same on 256 random
(unaligned, shuffled) locations, the access pattern of shuffled training.

    python -m pytest benchmarks/bench_slide_read.py --benchmark-only
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest

from clusiam_fast.slides import open_slide

REPO = Path(__file__).resolve().parents[1]
SLIDE = Path(os.environ.get("CLUSIAM_SHARED_DATA", REPO.parent / "shared" / "data")) / "wsi" / "CMU-1-Small-Region.svs"
THREADS = max(2, min(8, os.cpu_count() or 2))
SIZE = 224
ROUNDS = 5


@pytest.fixture(scope="module")
def locations() -> list[tuple[int, int]]:
    if not SLIDE.exists():
        pytest.skip(f"real slide {SLIDE} is absent (set CLUSIAM_SHARED_DATA to the shared/data folder)")
    return [(x, y) for y in range(0, 2967 - SIZE + 1, SIZE) for x in range(0, 2220 - SIZE + 1, SIZE)]


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def _per_region(reader, locations) -> int:
    for xy in locations:
        reader.read_region(xy, 0, SIZE)
    return len(locations)


def _batched(reader, locations, workers: int) -> int:
    return sum(len(b) for b in reader.read_regions(locations, 0, SIZE, num_workers=workers, batch_size=64))


def _run(benchmark, backend: str, locations, work) -> float:
    """Benchmark ``work(reader, locations)`` on a fresh reader per round; returns patches/s (best round)."""
    readers = []

    def setup():
        readers.append(open_slide(SLIDE, backend))
        return (readers[-1], locations), {}

    count = benchmark.pedantic(work, setup=setup, rounds=ROUNDS, iterations=1)
    for reader in readers:
        reader.close()
    assert count == len(locations)
    rate = len(locations) / benchmark.stats.stats.min
    benchmark.extra_info.update(backend=backend, patches=len(locations), patches_per_s=round(rate, 1))
    return rate


@pytest.fixture(scope="module")
def random_locations(locations) -> list[tuple[int, int]]:
    rng = np.random.default_rng(0)
    return [(int(x), int(y)) for x, y in zip(rng.integers(0, 2220 - SIZE, 256), rng.integers(0, 2967 - SIZE, 256))]


def _openslide_rate(locations) -> float:
    """OpenSlide per-region patches/s, best of ROUNDS fresh readers (the ratio's baseline)."""
    best = float("inf")
    for _ in range(ROUNDS):
        with open_slide(SLIDE, "openslide") as reader:
            start = time.perf_counter()
            _per_region(reader, locations)
            best = min(best, time.perf_counter() - start)
    return len(locations) / best


# How each case reads: one region at a time, or read_regions (cuCIM: its native batched
# read) on one thread or THREADS threads. cuCIM on THREADS threads is the ratio test below.
WORK = {
    "per-region": (_per_region, None),
    "batched-one-thread": (lambda r, l: _batched(r, l, 1), 1),
    "threads": (lambda r, l: _batched(r, l, THREADS), THREADS),
}
CASES = [
    ("openslide", "per-region"),
    ("openslide", "threads"),
    ("tifffile", "per-region"),
    ("tifffile", "threads"),
    ("cucim", "per-region"),
    ("cucim", "batched-one-thread"),
]


@pytest.mark.parametrize("backend,mode", CASES, ids=[f"{b}-{m}" for b, m in CASES])
def test_read(benchmark, locations, backend, mode):
    _need(backend)
    work, threads = WORK[mode]
    _run(benchmark, backend, locations, work)
    if threads is not None:
        benchmark.extra_info["threads"] = threads


def _ratio_info(benchmark, rate: float, baseline: float) -> None:
    benchmark.extra_info.update(
        threads=THREADS,
        openslide_per_region_patches_per_s=round(baseline, 1),
        cucim_over_openslide=round(rate / baseline, 2),
    )


def test_cucim_batched_threads(benchmark, locations):
    _need("cucim")
    _need("openslide")
    baseline = _openslide_rate(locations)
    rate = _run(benchmark, "cucim", locations, lambda r, l: _batched(r, l, THREADS))
    # same pixels, or the comparison means nothing
    with open_slide(SLIDE, "cucim") as a, open_slide(SLIDE, "openslide") as b:
        np.testing.assert_array_equal(a.read_patches(locations[:8], 0, SIZE), b.read_patches(locations[:8], 0, SIZE))
    _ratio_info(benchmark, rate, baseline)


def test_cucim_batched_threads_random_locations(benchmark, random_locations):
    _need("cucim")
    _need("openslide")
    baseline = _openslide_rate(random_locations)
    rate = _run(benchmark, "cucim", random_locations, lambda r, l: _batched(r, l, THREADS))
    _ratio_info(benchmark, rate, baseline)
