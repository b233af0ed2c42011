"""Shared fixtures: real data from ../shared/data (skipped cleanly when absent)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from child_processes import live_descendants, wait_for_no_descendants

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
    from clusiam_fast.utils.threads import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def crc_random_bags(crc_dir, tmp_path_factory) -> list:
    """crc-mini tiles embedded by a seeded random ResNet-18 (32 px), as feature bags (one per folder)."""
    import torch
    import torchvision

    from clusiam_fast.extraction.pipeline import extract
    from clusiam_fast.formats.feature_bags import load_bags

    root = tmp_path_factory.mktemp("crc_bags")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, root / "backbone.pt")
    extract(
        root / "backbone.pt",
        crc_dir,
        root / "bags",
        resize=32,
        batch_size=64,
        workers=0,
        mean=(0.7, 0.55, 0.7),
        std=(0.15, 0.2, 0.15),
        progress=False,
    )
    return load_bags(root / "bags")


@pytest.fixture(scope="session")
def patches(pcam_dir, tmp_path_factory) -> Path:
    """48 real PCam patches (24 per class), linked (not copied) into a temporary folder: 3 steps of 16 per epoch."""
    root = tmp_path_factory.mktemp("pcam48")
    for label in ("0", "1"):
        for src in sorted((pcam_dir / "train" / label).glob("*.jpg"))[:24]:
            (root / f"{label}_{src.name}").symlink_to(src)
    return root


# modules that start processes (Ray, process pools, mp.spawn, torchrun, loader workers): none may be left after them
PROCESS_MODULES = {
    "test_cluster_loss_ddp",
    "test_cohort",
    "test_cohort_ray",
    "test_sync_bn",
    "test_train_ddp",
    "test_train_multinode",
}


@pytest.fixture(scope="module", autouse=True)
def no_child_process_left(request):
    """After a module of PROCESS_MODULES (and its fixtures, e.g. a Ray instance): no process it started is alive.

    The package's kept local pools (``cohort/engines.py``, closed at exit) are closed first, as at exit; what
    is still alive 10 s later fails the module by name and is killed, so later modules are not blamed.
    """
    before = set(live_descendants())
    yield
    if request.module.__name__.rpartition(".")[2] not in PROCESS_MODULES:
        return
    import gc
    import signal
    import sys

    engines = sys.modules.get("clusiam_fast.cohort.engines")
    if engines is not None:
        engines._close_pools()
    gc.collect()  # loaders with persistent workers held only by reference cycles
    left = {pid: cmd for pid, cmd in wait_for_no_descendants(10.0).items() if pid not in before}
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if left:
        pytest.fail(f"{request.module.__name__} left {len(left)} process(es) running: {left}", pytrace=False)
