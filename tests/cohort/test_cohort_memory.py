"""Flat memory over a long cohort: ``tile --workers 2`` over generated slides, driver and workers watched.

The watch is ``benchmarks/bench_cohort_memory.py``'s (see there how growth is measured); TRIDENT users
report growth from 6 to 64 GB over 10,616 slides. 200 slides by default, about a minute on an idle
2-core machine (500 took 190 s on a 2-core machine at load 12; the benchmark runs 500):
``CLUSIAM_MEMORY_TEST_SLIDES=500`` for the full count. Measured at 500 slides: driver 47 -> 51 MB,
workers 96 -> 96 and 99 -> 96 MB (growth +4, +0, -3 MB; the limit is 200).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLIDES = int(os.environ.get("CLUSIAM_MEMORY_TEST_SLIDES", "200"))


def _watch_module():
    spec = importlib.util.spec_from_file_location("bench_cohort_memory", REPO / "benchmarks" / "bench_cohort_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_cohort_memory", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(900)
def test_resident_memory_stays_flat_over_a_long_cohort(wsi_dir, tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read resident memory")
    watch = _watch_module()
    slides = watch.make_small_cohort(tmp_path / "slides", SLIDES)
    run = watch.watch_tile(slides, tmp_path / "out", workers=2)
    assert run["returncode"] == 0, Path(run["log"]).read_text()[-2000:]
    assert len(list((tmp_path / "out" / "done").glob("*.json"))) == SLIDES
    rows = watch.memory_report(run)
    print(watch.format_report(rows, SLIDES, run["seconds"]))
    assert {r["role"] for r in rows} == {"driver", "worker or helper"}  # the driver and its workers were watched
    assert len(rows) >= 3  # driver, fork server, 2 workers (the resource tracker too, where one runs)
    for r in rows:
        assert r["growth_mb"] < watch.LIMIT_MB, watch.format_report(rows, SLIDES, run["seconds"])
