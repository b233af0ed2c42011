"""Benchmarks: pytest benchmarks/ --benchmark-only. Ratio tables are printed at the end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_utils  # noqa: E402


def pytest_collection_modifyitems(items):
    """Benchmarks get an hour each, not the tests' 10 minutes (pyproject.toml): the big-slide workloads take long."""
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(item.path).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(3600))


def pytest_terminal_summary(terminalreporter):
    for summary in bench_utils.SUMMARIES:
        text = summary()
        if text:
            terminalreporter.write_sep("=", "ratios measured in this run")
            terminalreporter.write_line(text)


@pytest.fixture
def one_thread():
    """One torch thread for the duration of a benchmark."""
    from clusiam_fast.utils.threads import torch_threads

    with torch_threads(1):
        yield
