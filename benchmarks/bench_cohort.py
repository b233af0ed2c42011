"""Cohort tiling as a user runs it: one ``python -m clusiam_fast.tile`` command per round, timed whole.

Every round is a fresh process (interpreter start, imports, the local pool or Ray, planning,
the slides, the manifest) tiling the workload into a fresh folder. Workloads (made once per
session by ``benchmarks/make_cohort.py``: pyramidal JPEG SVS slides of real tissue):

- ``cohort``: 12 slides of 8000 x 6000 (``CLUSIAM_BENCH_COHORT``, default ``12x8000x6000``);
- ``scaling``: 48 such slides (``CLUSIAM_BENCH_SCALING``, default ``48``; ``0`` leaves it out), on
  which 2 local workers must reach >= 1.7x of 1 (12 slides are too few: the fixed costs weigh);
- ``big``: one 40,000 x 30,000 slide (``CLUSIAM_BENCH_BIG``, default ``0``: off).

Engines: ``local`` with 1 and 2 worker processes; ``ray`` with its own local instance of 1 and
2 CPUs (started by the command: Ray's start is in the time); ``rayjoin``: the command joins a
Ray head started once for the session (``ray start --head --num-cpus 1|2``; ``--ray-address``).
Caches: ``warm`` (the slides' pages in the OS cache, as on a re-run) and ``cold`` (the slides
evicted from the page cache before each round with ``posix_fadvise(DONTNEED)``).

``CLUSIAM_BENCH_CLAM=/path/to/CLAM:/path/to/its/python`` also times CLAM's
``create_patches_fp.py --seg --patch --stitch --preset tcga.csv --patch_size 256`` on the same
12 slides (CLAM 53e2409 in its own venv: openslide-python, openslide-bin, opencv-python-headless,
h5py, pandas, matplotlib, pillow, tqdm), so that the ratio to it is measured in the same session.

    python -m pytest benchmarks/bench_cohort.py --benchmark-only
    CLUSIAM_BENCH_SCALING=0 python -m pytest benchmarks/bench_cohort.py -k "local and warm"  # quick

``CLUSIAM_BENCH_ROUNDS`` (default 3) and ``CLUSIAM_BENCH_WARMUP`` (default 1) set the rounds.
``extra_info`` holds the median CPU seconds of a round (the command and the processes it waited
for, so not Ray's workers): a loaded machine disturbs it less than the wall time.

Extraction (in one process, Ray started outside the timing): patches/s of the local engine vs
one Ray CPU actor fed by Ray read tasks (a seeded random ResNet-18, 64 px, one torch thread) on
the first 3 slides of the cohort.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bench_utils import RESULTS, SUMMARIES, ratio, record, write_summary

REPO = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("CLUSIAM_BENCH_ROUNDS", "3"))
WARMUP = int(os.environ.get("CLUSIAM_BENCH_WARMUP", "1"))
THROUGHPUT: dict[str, str] = {}  # benchmark key -> "median s, slides/h, cpu s" (printed with the ratios)
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    "RAY_AUTH_MODE": "disabled",
}


def _spec(name: str, default: str) -> tuple[int, tuple[int, int]] | None:
    text = os.environ.get(name, default)
    if text in ("0", ""):
        return None
    parts = [int(p) for p in text.split("x")]
    if len(parts) == 1:
        return parts[0], (8000, 6000)
    return (parts[0], (parts[1], parts[2])) if len(parts) == 3 else (1, (parts[0], parts[1]))


@pytest.fixture(scope="session")
def workloads(tmp_path_factory) -> dict[str, Path]:
    """Folder of slides per workload; the 12-slide cohort is the first 12 of the 48 (same seeds), linked."""
    import make_cohort

    if not make_cohort.SHARED_WSI.exists():
        pytest.skip(f"real slides {make_cohort.SHARED_WSI} are absent (the cohort is cut from them)")
    root = tmp_path_factory.mktemp("cohort")
    found: dict[str, Path] = {}
    cohort, scaling = _spec("CLUSIAM_BENCH_COHORT", "12x8000x6000"), _spec("CLUSIAM_BENCH_SCALING", "48")
    if scaling:
        found["scaling"] = root / "scaling"
        make_cohort.write_cohort(found["scaling"], n=scaling[0], size=scaling[1], seed=0)
    if cohort:
        found["cohort"] = root / "cohort"
        if scaling and scaling[1] == cohort[1] and scaling[0] >= cohort[0]:
            found["cohort"].mkdir()
            for slide in sorted(found["scaling"].glob("*.svs"))[: cohort[0]]:
                (found["cohort"] / slide.name).symlink_to(slide)
        else:
            make_cohort.write_cohort(found["cohort"], n=cohort[0], size=cohort[1], seed=0)
    big = _spec("CLUSIAM_BENCH_BIG", "0")
    if big:
        found["big"] = root / "big"
        make_cohort.write_slide(found["big"] / "big.svs", big[1], seed=999)
    return found


def _evict(folder: Path) -> None:
    """Drop the slides' pages from the OS page cache (no root needed for pages nobody has dirty)."""
    for slide in folder.iterdir():
        with open(slide.resolve(), "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _ray_head(cpus: int):
    """``ray start --head`` with ``cpus`` CPUs in its own temp dir; yields its address; stopped after."""
    pytest.importorskip("ray")
    port, temp = _free_port(), Path(f"/tmp/rb{os.getpid()}-{cpus}")  # short: Ray's socket paths are capped
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(port), "--num-cpus", str(cpus)]
        + ["--include-dashboard", "false", "--block", "--disable-usage-stats", "--temp-dir", str(temp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=ENV,
    )
    try:
        for line in head.stdout:
            if "Ray runtime started" in line or head.poll() is not None:
                break
        assert head.poll() is None, "ray start --head failed"
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # --block: stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _timed(benchmark, command: list[str], out_of, cwd: Path, before=None) -> tuple[float, subprocess.CompletedProcess]:
    """``benchmark.pedantic`` over fresh runs of ``command + [out]``; (median CPU s per run, the last run)."""
    runs: list[subprocess.CompletedProcess] = []
    cpu: list[float] = []

    def setup():
        if before:
            before()
        out = out_of()
        shutil.rmtree(out, ignore_errors=True)
        return (out,), {}

    def run(out: Path) -> None:
        start = resource.getrusage(resource.RUSAGE_CHILDREN)
        runs.append(subprocess.run([*command, str(out)], cwd=cwd, env=ENV, capture_output=True, text=True))
        end = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    last = runs[-1]
    assert last.returncode == 0, last.stderr[-3000:]
    return sorted(cpu)[len(cpu) // 2], last


CASES = [
    ("local", 1, "warm"),
    ("local", 2, "warm"),
    ("local", 1, "cold"),
    ("local", 2, "cold"),
    ("ray", 1, "warm"),
    ("ray", 2, "warm"),
    ("rayjoin", 1, "warm"),
    ("rayjoin", 2, "warm"),
]


@pytest.mark.parametrize("workload", ["cohort", "scaling", "big"])
@pytest.mark.parametrize("engine,workers,cache", CASES)
def test_tile_command(benchmark, workloads, tmp_path, workload, engine, workers, cache):
    if workload not in workloads:
        pytest.skip(f"workload {workload} switched off (CLUSIAM_BENCH_*=0)")
    if workload != "cohort" and (engine != "local" or cache != "warm"):
        pytest.skip("scaling and big: the local engine, warm, only")
    slides = workloads[workload]
    command = [sys.executable, "-m", "clusiam_fast.tile", str(slides), "--workers", str(workers)]
    command += ["--engine", "local" if engine == "local" else "ray"]
    rounds = iter(range(10**6))
    with _ray_head(workers) if engine == "rayjoin" else contextlib.nullcontext() as address:
        if address:
            command += ["--ray-address", address]
        cpu, last = _timed(
            benchmark,
            [*command, "--out"],
            lambda: tmp_path / f"out{next(rounds)}",
            tmp_path,
            before=(lambda: _evict(slides)) if cache == "cold" else None,
        )
    assert f"tiled {len(list(slides.iterdir()))} of" in last.stdout, last.stdout
    seconds = benchmark.stats.stats.median
    count = len(list(slides.iterdir()))
    key = f"tile-{workload}-{engine}-{workers}-{cache}"
    record(benchmark, key, slides=count, slides_per_hour=count * 3600 / seconds, cpu_seconds=round(cpu, 3))
    THROUGHPUT[key] = f"{seconds:7.2f} s  {count * 3600 / seconds:7.0f} slides/h  cpu {cpu:6.2f} s ({count} slides)"


def test_clam_create_patches_fp(benchmark, workloads, tmp_path):
    """CLAM's own tiler on the same 12 slides, in its own venv (``CLUSIAM_BENCH_CLAM=CLAM_DIR:PYTHON``)."""
    spec = os.environ.get("CLUSIAM_BENCH_CLAM", "")
    if ":" not in spec or "cohort" not in workloads:
        pytest.skip("set CLUSIAM_BENCH_CLAM=/path/to/CLAM:/path/to/its/python to time CLAM on the same cohort")
    clam, python = spec.split(":", 1)
    command = [python, "create_patches_fp.py", "--source", str(workloads["cohort"]), "--patch_size", "256"]
    command += ["--preset", "tcga.csv", "--seg", "--patch", "--stitch", "--save_dir"]
    rounds = iter(range(10**6))
    cpu, _ = _timed(benchmark, command, lambda: tmp_path / f"clam{next(rounds)}", Path(clam))
    seconds = benchmark.stats.stats.median
    record(benchmark, "clam-cohort", cpu_seconds=round(cpu, 3))
    THROUGHPUT["clam-cohort"] = f"{seconds:7.2f} s  cpu {cpu:6.2f} s (CLAM create_patches_fp, single process)"


@pytest.fixture(scope="module")
def extraction_input(workloads, tmp_path_factory):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from clusiam_fast.tiling import TileConfig, tile_slides

    if "cohort" not in workloads:
        pytest.skip("the cohort workload is switched off")
    root = tmp_path_factory.mktemp("extract")
    report = tile_slides(sorted(workloads["cohort"].iterdir())[:3], root / "tiles", TileConfig(), progress=False)
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
        ray = pytest.importorskip("ray")
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)  # actor + reads
    rounds = iter(range(10**6))
    summaries = []

    def fresh():
        return (tmp_path / f"out{next(rounds)}",), {}

    def run(out):
        options = dict(resize=64, batch_size=64, workers=1, engine=engine, actors=1, progress=False)
        summaries.append(
            extract(
                extraction_input / "bb.pt",
                extraction_input / "tiles",
                out,
                mean=(0.7, 0.55, 0.7),
                std=(0.15, 0.2, 0.15),
                **options,
            )
        )

    try:
        benchmark.pedantic(run, setup=fresh, rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    finally:
        if engine == "ray":
            ray.shutdown()
    summary = summaries[-1]
    assert summary["num_slides"] == 3 and not summary["failed_slides"]
    speed = summary["num_patches"] / benchmark.stats.stats.median
    record(benchmark, f"extract-{engine}", patches_per_second=speed)
    THROUGHPUT[f"extract-{engine}"] = f"{speed:8.0f} patches/s ({summary['num_patches']} patches, actor start included)"


def _summary() -> str:
    if not any(key.startswith(("tile-", "clam-", "extract-")) for key in RESULTS):
        return ""
    c = "tile-cohort"
    rows = [
        ("local 1 worker / CLAM single process (time; target <= 1)", ratio(f"{c}-local-1-warm", "clam-cohort"), "<= 1"),
        (
            "cohort: local 2 vs 1 workers (speed-up)",
            ratio(f"{c}-local-1-warm", f"{c}-local-2-warm"),
            "~1.4 (12 slides)",
        ),
        (
            "48 slides: local 2 vs 1 workers (speed-up)",
            ratio("tile-scaling-local-1-warm", "tile-scaling-local-2-warm"),
            ">= 1.7",
        ),
        ("cohort: cold / warm page cache, 1 worker", ratio(f"{c}-local-1-cold", f"{c}-local-1-warm"), "~1"),
        ("cohort: ray own instance / local, 1 worker (time)", ratio(f"{c}-ray-1-warm", f"{c}-local-1-warm"), ""),
        ("cohort: ray own instance / local, 2 workers (time)", ratio(f"{c}-ray-2-warm", f"{c}-local-2-warm"), ""),
        ("cohort: ray joined / local, 1 worker (time)", ratio(f"{c}-rayjoin-1-warm", f"{c}-local-1-warm"), ""),
        ("cohort: ray joined / local, 2 workers (time)", ratio(f"{c}-rayjoin-2-warm", f"{c}-local-2-warm"), ""),
        ("cohort: ray joined 2 vs 1 CPUs (speed-up)", ratio(f"{c}-rayjoin-1-warm", f"{c}-rayjoin-2-warm"), ""),
        ("extract: ray actor/local speed (CPU, in one process)", ratio("extract-local", "extract-ray"), ">= 0.9"),
    ]
    lines = [f"{key:34s} {text}" for key, text in THROUGHPUT.items()]
    return "\n".join(lines) + "\n\n" + write_summary("cohort", rows)


SUMMARIES.append(_summary)
