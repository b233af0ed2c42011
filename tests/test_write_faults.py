"""Outputs the file system refuses: a full disk (a real file-size limit, RLIMIT_FSIZE: writes past it fail
with EFBIG as on a full disk with ENOSPC) and a read-only --out, for train, extract and tile. Each is one
line naming the file and the OS reason, no traceback, a non-zero exit, and the last checkpoint kept."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from train_cases import small_config

REPO = Path(__file__).resolve().parents[1]
CMU = "CMU-1-Small-Region.svs"

_LIMITED = (
    "import resource, runpy, sys\n"
    "limit = int(sys.argv[1])\n"
    "if limit:\n"  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
    "    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "sys.argv = sys.argv[2:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _cli(module: str, *argv, max_file_bytes: int = 0) -> subprocess.CompletedProcess:
    """``python -m module argv`` in a fresh process whose files may not grow past ``max_file_bytes`` (0: no limit)."""
    cmd = [sys.executable, "-c", _LIMITED, str(max_file_bytes), module, *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` refuses new files: mode 0o555, or, for root (who ignores modes), the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
        pytest.skip("running as root, and chattr +i is not available here: no folder is read-only for root")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _one_line_error(done: subprocess.CompletedProcess, status: int, message: str) -> None:
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if message in line]
    assert len(lines) == 1, done.stderr[-3000:]


@pytest.fixture(scope="module")
def run(patches, tmp_path_factory) -> Path:
    """A two-step CluSiam run on 48 PCam patches: checkpoint.pt and its logs."""
    from clusiam_fast.training import train

    out = tmp_path_factory.mktemp("write_faults") / "run"
    train(small_config(patches, out, max_steps=2))
    return out


@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_a_refused_checkpoint_save_is_one_line_and_the_last_checkpoint_is_kept(run, tmp_path, fault):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = _digest(out / "checkpoint.pt")
    argv = ("--out", out, "--resume", "--max-steps", "4")
    if fault == "disk-full":
        done = _cli("clusiam_fast.train", *argv, max_file_bytes=1_000_000)
        reason = "File too large (errno 27)"
    else:
        with _read_only(out):
            done = _cli("clusiam_fast.train", *argv)
        reason = "(errno 13)" if os.geteuid() else "(errno 1)"
    # a read-only OUT refuses config.yaml, written before training starts; a full disk, the checkpoint
    first = "checkpoint.pt" if fault == "disk-full" else "config.yaml"
    _one_line_error(done, 2, f"clusiam-fast train: error: cannot write {out / first}: ")
    assert reason in done.stderr, done.stderr[-2000:]
    assert fault == "read-only" or "(the previous file is kept)" in done.stderr, done.stderr[-2000:]
    assert _digest(out / "checkpoint.pt") == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no half-written temporary left


def test_extract_on_a_full_disk_fails_the_bag_by_name_and_does_not_crash(run, patches, tmp_path):
    out = tmp_path / "bags_out"
    argv = (run / "checkpoint.pt", patches, "--out", out, "--workers", "0", "--resize", "32", "--quiet")
    done = _cli("clusiam_fast.extract", *argv, max_file_bytes=20_000)  # the bag (48 x 512 float32) does not fit
    assert done.returncode == 1, done.stderr[-3000:]  # not a crash of HDF5 at exit (-11)
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-3000:]
    assert f"cannot write {out / 'bags'}" in done.stderr and "File too large (errno 27)" in done.stderr
    assert not list((out / "bags").iterdir())


def test_extract_into_a_read_only_out_is_one_line(run, patches, tmp_path):
    out = tmp_path / "bags_out"
    out.mkdir()
    with _read_only(out):
        done = _cli("clusiam_fast.extract", run / "checkpoint.pt", patches, "--out", out, "--workers", "0")
    _one_line_error(done, 2, f"clusiam-fast extract: error: cannot write {out}/")


def test_tile_on_a_full_disk_names_the_file_it_could_not_write(wsi_dir, tmp_path):
    out = tmp_path / "tiles"
    slide = wsi_dir / CMU
    done = _cli("clusiam_fast.tile", slide, "--out", out, "--workers", "1", max_file_bytes=100)
    _one_line_error(done, 2, f"clusiam-fast tile: error: cannot write {out / 'cohort.json'}: File too large (errno 27)")
    done = _cli("clusiam_fast.tile", slide, "--out", out, "--workers", "1", max_file_bytes=20_000)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (
        f"{CMU}: cannot write {out / 'thumbnails' / 'CMU-1-Small-Region.png'}: File too large"
        in done.stdout + done.stderr
    )


def test_tile_into_a_read_only_out_is_one_line(wsi_dir, tmp_path):
    out = tmp_path / "tiles"
    out.mkdir()
    with _read_only(out):
        done = _cli("clusiam_fast.tile", wsi_dir / CMU, "--out", out, "--workers", "1")
    _one_line_error(done, 2, f"clusiam-fast tile: error: cannot write {out}/")


def test_evaluate_into_a_read_only_out_is_one_line(crc_dir, tmp_path):
    """evaluate writes report.md / report.json through the same atomic writer: a refused write is one line."""
    import torch
    import torchvision

    from clusiam_fast.extraction.pipeline import extract

    torch.manual_seed(0)
    backbone = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pt")
    extract(tmp_path / "backbone.pt", crc_dir, tmp_path / "bags", resize=32, workers=0, progress=False)
    out = tmp_path / "eval"
    out.mkdir()
    with _read_only(out):
        done = _cli("clusiam_fast.evaluate", tmp_path / "bags", "--out", out)
    _one_line_error(done, 2, f"clusiam-fast evaluate: error: cannot write {out}/")
