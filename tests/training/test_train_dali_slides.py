"""``train --loader dali`` straight from slides: an interrupted run resumes exactly; --decode-device errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from train_cases import small_config

pytest.importorskip("nvidia.dali")

from clusiam_fast.tiling import TileConfig, tile_slides  # noqa: E402
from clusiam_fast.training import train  # noqa: E402


@pytest.fixture(scope="module")
def manifest(wsi_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiles")
    report = tile_slides([wsi_dir / "CMU-1-Small-Region.svs"], out, TileConfig(), progress=False)
    assert report.ok, report.summary()
    return out / "manifest.csv"


def test_dali_from_slides_interrupt_then_resume_equals_an_uninterrupted_run(manifest, tmp_path, one_thread):
    """Ctrl-C mid-epoch saves; --resume replays the epoch's (seed, epoch)-fixed DALI batches: same weights."""
    config = dict(method="clusiam", epochs=2, loader="dali", workers=1, max_stat_images=16)
    straight = train(small_config(manifest, tmp_path / "a", **config))

    def press_ctrl_c(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(small_config(manifest, tmp_path / "b", **config), on_step=press_ctrl_c)
    assert first.status == "interrupted" and first.step == 3
    resumed = train(small_config(manifest, tmp_path / "b", resume=True, **config))
    assert resumed.status == "complete" and resumed.step == straight.step == 2 * (43 // 8)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_decode_device_errors_from_the_cli(manifest, tmp_path, crc_dir, capsys):
    from clusiam_fast.train import main

    base = ["--out", str(tmp_path / "run"), "--max-steps", "1", "--no-progress", "--no-tensorboard"]
    rc = main([str(crc_dir), *base, "--decode-device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "--decode-device cuda" in err and err.strip().count("\n") == 0
    if not torch.cuda.is_available():
        rc = main([str(manifest), *base, "--loader", "dali", "--decode-device", "cuda"])
        err = capsys.readouterr().err
        assert rc == 2 and "--decode-device cuda" in err and ("no CUDA GPU" in err or "needs cuCIM" in err)


@pytest.mark.cuda
@pytest.mark.parametrize("loader", ["torch", "dali"])
def test_gpu_decoded_slides_train(manifest, tmp_path, loader):
    """Must pass on the first GPU run: a few steps from cuCIM GPU-decoded patches, either loader."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    config = dict(loader=loader, decode_device="cuda", device="cuda", workers=1, max_steps=3, max_stat_images=16)
    result = train(small_config(manifest, tmp_path / loader, **config))
    assert result.status == "max_steps" and result.step == 3
