"""Cohort engines: slides per hour and patches per second, local process pool vs Ray, 1 and 2 workers.

Workloads (made once per session by ``benchmarks/make_cohort.py``: pyramidal JPEG SVS slides of
real tissue): a 12-slide cohort (``CLUSIAM_BENCH_COHORT``, default ``12x8000x6000``) and one big
slide (``CLUSIAM_BENCH_BIG``, default ``40000x30000``; ``0`` leaves it out). Every round tiles the
workload into a fresh folder, after one warm-up round (the pool's / Ray's workers have imported
the tiler). Engines: ``local`` with 1 and 2 worker processes; ``ray`` with a local instance of 1
and 2 CPUs (one task per slide, 1 CPU each), started outside the timing.

Extraction: patches/s of the local engine vs one Ray CPU actor fed by Ray read tasks (a seeded
random ResNet-18, 64 px, one torch thread) on the first 3 slides of the cohort.

Targets on a 2-core machine: Ray within 10% of the local engine at equal workers; >= 1.7x from 1
to 2 workers for the cohort (a single slide is one task: 2 workers cannot speed it up).

    python -m pytest benchmarks/bench_cohort.py --benchmark-only
    CLUSIAM_BENCH_COHORT=4x2000x1500 CLUSIAM_BENCH_BIG=0 python -m pytest benchmarks/bench_cohort.py  # quick

``CLUSIAM_BENCH_ROUNDS`` (default 2) and ``CLUSIAM_BENCH_WARMUP`` (default 1) set the rounds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from bench_utils import RESULTS, SUMMARIES, ratio, record, write_summary

from clusiam_fast.tiling import TileConfig, tile_slides

ray = pytest.importorskip("ray")
ROUNDS = int(os.environ.get("CLUSIAM_BENCH_ROUNDS", "2"))
WARMUP = int(os.environ.get("CLUSIAM_BENCH_WARMUP", "1"))
THROUGHPUT: dict[str, str] = {}  # benchmark key -> "slides/h, patches/s" (printed with the ratios)


def _spec(name: str, default: str) -> tuple[int, tuple[int, int]] | None:
    text = os.environ.get(name, default)
    if text in ("0", ""):
        return None
    parts = [int(p) for p in text.split("x")]
    return (parts[0], (parts[1], parts[2])) if len(parts) == 3 else (1, (parts[0], parts[1]))


@pytest.fixture(scope="session")
def workloads(tmp_path_factory) -> dict[str, list[Path]]:
    import make_cohort

    if not make_cohort.SHARED_WSI.exists():
        pytest.skip(f"real slides {make_cohort.SHARED_WSI} are absent (the cohort is cut from them)")
    root = tmp_path_factory.mktemp("cohort")
    found: dict[str, list[Path]] = {}
    cohort = _spec("CLUSIAM_BENCH_COHORT", "12x8000x6000")
    if cohort:
        found["cohort"] = make_cohort.write_cohort(root / "cohort", n=cohort[0], size=cohort[1], seed=0)
    big = _spec("CLUSIAM_BENCH_BIG", "40000x30000")
    if big:
        found["big"] = [make_cohort.write_slide(root / "big" / "big.svs", big[1], seed=999)]
    return found


_RAY_CPUS: list[int] = []


def _ray_with(cpus: int) -> None:
    """A local Ray instance of ``cpus`` CPUs (restarted when another size is asked for)."""
    if _RAY_CPUS == [cpus] and ray.is_initialized():
        return
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, configure_logging=False)
    _RAY_CPUS[:] = [cpus]


@pytest.fixture(scope="module", autouse=True)
def _ray_down():
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize("workload", ["cohort", "big"])
@pytest.mark.parametrize("engine,workers", [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)])
def test_tile(benchmark, workloads, tmp_path, workload, engine, workers):
    if workload not in workloads:
        pytest.skip(f"workload {workload} switched off (CLUSIAM_BENCH_*=0)")
    slides = workloads[workload]
    if engine == "ray":
        _ray_with(workers)
    rounds = iter(range(10**6))
    reports = []

    def fresh():
        out = tmp_path / f"out{next(rounds)}"
        shutil.rmtree(out, ignore_errors=True)
        return (out,), {}

    def run(out):
        reports.append(tile_slides(slides, out, TileConfig(), workers=workers, engine=engine, progress=False))

    benchmark.pedantic(run, setup=fresh, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    report = reports[-1]
    assert report.ok, report.summary()
    seconds = benchmark.stats.stats.median
    patches = sum(int(r["num_patches"]) for r in report.rows)
    key = f"tile-{workload}-{engine}-{workers}"
    record(
        benchmark,
        key,
        slides_per_hour=len(slides) * 3600 / seconds,
        patches_per_second=patches / seconds,
        slides=len(slides),
        patches=patches,
    )
    THROUGHPUT[key] = (
        f"{len(slides) * 3600 / seconds:8.0f} slides/h {patches / seconds:8.0f} patches/s ({patches} patches)"
    )


@pytest.fixture(scope="module")
def extraction_input(workloads, tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    if "cohort" not in workloads:
        pytest.skip("the cohort workload is switched off")
    root = tmp_path_factory.mktemp("extract")
    report = tile_slides(workloads["cohort"][:3], root / "tiles", TileConfig(), progress=False)
    assert report.ok, report.summary()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, root / "bb.pt")
    return root


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_extract(benchmark, extraction_input, tmp_path, engine, one_thread):
    from clusiam_fast.extraction.pipeline import extract

    if engine == "ray":
        _ray_with(2)  # one actor (1 CPU) + read tasks (1 CPU)
    rounds = iter(range(10**6))
    summaries = []

    def fresh():
        return (tmp_path / f"out{next(rounds)}",), {}

    def run(out):
        summaries.append(
            extract(
                extraction_input / "bb.pt",
                extraction_input / "tiles",
                out,
                resize=64,
                batch_size=64,
                workers=1,
                engine=engine,
                actors=1,
                progress=False,
                mean=(0.7, 0.55, 0.7),
                std=(0.15, 0.2, 0.15),
            )
        )

    benchmark.pedantic(run, setup=fresh, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    summary = summaries[-1]
    assert summary["num_slides"] == 3 and not summary["failed_slides"]
    speed = summary["num_patches"] / benchmark.stats.stats.median
    record(benchmark, f"extract-{engine}", patches_per_second=speed)
    THROUGHPUT[f"extract-{engine}"] = f"{speed:8.0f} patches/s ({summary['num_patches']} patches, actor start included)"


def _summary() -> str:
    rows = []
    for workload in ("cohort", "big"):
        scale = ">= 1.7" if workload == "cohort" else "(one slide: ~1)"
        for engine in ("local", "ray"):
            rows.append(
                (
                    f"tile {workload}: {engine} 2 vs 1 workers (speed-up)",
                    ratio(f"tile-{workload}-{engine}-1", f"tile-{workload}-{engine}-2"),
                    scale,
                )
            )
        for workers in (1, 2):
            rows.append(
                (
                    f"tile {workload}: ray/local speed at {workers} worker(s)",
                    ratio(f"tile-{workload}-local-{workers}", f"tile-{workload}-ray-{workers}"),
                    ">= 0.9",
                )
            )
    rows.append(("extract: ray actor/local speed (CPU)", ratio("extract-local", "extract-ray"), ">= 0.9"))
    if not any(key.startswith(("tile-", "extract-")) for key in RESULTS):
        return ""
    lines = [f"{key:22s} {text}" for key, text in THROUGHPUT.items()]
    return "\n".join(lines) + "\n\n" + write_summary("cohort", rows)


SUMMARIES.append(_summary)
