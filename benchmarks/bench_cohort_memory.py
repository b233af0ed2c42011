"""Resident memory over a long cohort: ``tile`` on hundreds of small slides, driver and workers watched.

TRIDENT users report resident memory growing from 6 to 64 GB over 10,616 slides. Here the
``tile`` command runs as a user runs it (a subprocess, ``--workers 2``) over ``N`` generated
slides (``benchmarks/make_cohort.py``, 1024 x 768 px, each a link to one file under its own
name), and a watcher samples the resident set (``VmRSS``) of the driver and of every process
under it (fork server, workers) every 0.2 s. Growth of a process = its RSS over the last tenth
of its samples (median) less its RSS once warmed up (median of the samples from 20 % to 30 % of
the run). Target: every process grows by less than 200 MB.

    python -m pytest benchmarks/bench_cohort_memory.py --benchmark-only     # N = 500
    CLUSIAM_BENCH_MEMORY_SLIDES=2000 python -m pytest benchmarks/bench_cohort_memory.py

``tests/cohort/test_cohort_memory.py`` runs the same watch as a test (200 slides; 500 with
``CLUSIAM_MEMORY_TEST_SLIDES=500``). Measured at 500 slides (2-core machine at load 12, 190 s):
driver 47 -> 51 MB, fork server 13, workers 96 -> 96 and 99 -> 96 MB: flat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SIZE = (1024, 768)
LIMIT_MB = 200


def make_small_cohort(folder: Path, n: int) -> Path:
    """``n`` slides ``s0000.svs`` ... in ``folder``: links to one generated SVS of real tissue."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import make_cohort

    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "source" / "one.svs"
    if not source.exists():
        make_cohort.write_slide(source, SIZE, seed=0, workers=1)
    for k in range(n):
        link = folder / f"s{k:04d}.svs"
        if not link.exists():
            os.symlink(source, link)
    return folder


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def watch_tile(slides: Path, out: Path, workers: int = 2, interval: float = 0.2) -> dict:
    """Run ``tile slides --out out --workers N`` and sample the RSS (MB) of its process tree.

    Returns {"seconds", "returncode", "samples": {pid: [(t, mb), ...]}, "driver": pid, "log": str}.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "clusiam_fast.tile", str(slides), "--out", str(out), "--workers", str(workers)]
    samples: dict[int, list[tuple[float, float]]] = {}
    start = time.perf_counter()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink, env=env, cwd=REPO)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                now = time.perf_counter() - start
                for pid in _descendants(process.pid):
                    mb = _rss_mb(pid)
                    if mb is not None:
                        samples.setdefault(pid, []).append((now, mb))
                done.wait(interval)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        returncode = process.wait()
        done.set()
        watcher.join()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "returncode": returncode, "samples": samples, "driver": process.pid, "log": log}


def growth_mb(series: list[tuple[float, float]], seconds: float) -> tuple[float, float, float]:
    """(warm RSS, final RSS, growth) of one process's samples; see the module docstring."""
    times = np.array([t for t, _ in series])
    rss = np.array([mb for _, mb in series])
    warm = rss[(times >= 0.2 * seconds) & (times <= 0.3 * seconds)]
    if len(warm) == 0:
        return float(rss[0]), float(rss[-1]), 0.0
    final = rss[-max(1, len(rss) // 10) :]
    return float(np.median(warm)), float(np.median(final)), float(np.median(final) - np.median(warm))


def memory_report(run: dict) -> list[dict]:
    """One row per process that lived through most of the run: pid, role, warm, final, peak and growth (MB)."""
    rows = []
    for pid, series in sorted(run["samples"].items()):
        if series[-1][0] - series[0][0] < 0.5 * run["seconds"]:
            continue  # short-lived helpers (a process started and gone within the run)
        warm, final, grown = growth_mb(series, run["seconds"])
        role = "driver" if pid == run["driver"] else "worker or helper"
        peak = max(mb for _, mb in series)
        rows.append({"pid": pid, "role": role, "warm_mb": warm, "final_mb": final, "peak_mb": peak, "growth_mb": grown})
    return rows


def format_report(rows: list[dict], n: int, seconds: float) -> str:
    lines = [f"tile --workers 2 over {n} slides in {seconds:.0f} s; resident memory (MB):"]
    for r in rows:
        lines.append(
            f"  {r['role']:<16} pid {r['pid']}: warm {r['warm_mb']:.0f}, final {r['final_mb']:.0f}, "
            f"peak {r['peak_mb']:.0f}, growth {r['growth_mb']:+.0f}"
        )
    return "\n".join(lines)


@pytest.mark.benchmark(group="cohort-memory")
def test_memory_flat_over_a_long_cohort(benchmark, tmp_path_factory):
    import make_cohort

    if not make_cohort.SHARED_WSI.exists():
        pytest.skip(f"real slides {make_cohort.SHARED_WSI} are absent (the cohort is cut from them)")
    n = int(os.environ.get("CLUSIAM_BENCH_MEMORY_SLIDES", "500"))
    slides = make_small_cohort(tmp_path_factory.mktemp("memory") / "slides", n)
    runs = []

    def one() -> None:
        runs.append(watch_tile(slides, tmp_path_factory.mktemp("out") / "out"))

    benchmark.pedantic(one, rounds=1, iterations=1)
    run = runs[-1]
    assert run["returncode"] == 0, Path(run["log"]).read_text()[-2000:]
    rows = memory_report(run)
    print("\n" + format_report(rows, n, run["seconds"]))
    assert rows and all(r["growth_mb"] < LIMIT_MB for r in rows)
