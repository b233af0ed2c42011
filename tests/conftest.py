"""Shared fixtures: real data from ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CLUSIAM_SHARED_DATA", REPO.parent / "shared" / "data"))


def _data(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set CLUSIAM_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _data("")


@pytest.fixture(scope="session")
def pcam_dir() -> Path:
    """PatchCamelyon 96-px JPEG patches: {train,valid}/{0,1}/*.jpg."""
    return _data("pcam")


@pytest.fixture(scope="session")
def wsi_dir() -> Path:
    """Real slides: CMU-1-Small-Region.svs, tcga-...svs (no mpp), OS-1-detail.ome.tif."""
    return _data("wsi")


@pytest.fixture(scope="session")
def crc_dir() -> Path:
    """Kather colorectal tiles with labels in the file names."""
    return _data("crc-mini")


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models on a shared 2-core machine are faster so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
