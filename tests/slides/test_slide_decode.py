"""Where patch pixels are decoded: ``read_patches(..., device=)`` and the tiler's ``--decode-device``.

The CPU path is what every reader did before; ``cuda`` (cuCIM's cuslide2 / nvImageCodec) is
checked against it on a GPU machine only (``-m cuda``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from clusiam_fast.slides import SlideError, check_decode_device, open_slide, read_patches
from clusiam_fast.slides.cucim_reader import cuda_visible
from clusiam_fast.tiling import TileConfig, tile_slide

CMU = "CMU-1-Small-Region.svs"
OME = "OS-1-detail.ome.tif"
COORDS = np.array([[0, 0], [224, 448], [1000, 1200], [1996, 2743]])


def _gpu() -> bool:
    return importlib.util.find_spec("cucim") is not None and cuda_visible() is None


def test_cpu_read_patches_is_the_readers_own_read(wsi_dir):
    for backend in ("cucim", "openslide", "tifffile"):
        if importlib.util.find_spec(backend) is None:
            continue
        with open_slide(wsi_dir / CMU, backend) as reader:
            batch = read_patches(reader, COORDS, 0, 224)
            assert isinstance(batch, np.ndarray) and batch.shape == (4, 224, 224, 3) and batch.dtype == np.uint8
            assert np.array_equal(batch, reader.read_patches(COORDS, 0, 224))
            assert np.array_equal(batch[2], reader.read_region((1000, 1200), 0, 224))


def test_cuda_on_a_cpu_reader_says_cucim_on_cuda_is_needed(wsi_dir):
    with open_slide(wsi_dir / OME) as reader:  # tifffile
        with pytest.raises(SlideError, match="GPU decoding needs a cuCIM reader opened with device='cuda'"):
            read_patches(reader, COORDS[:1], 0, 224, device="cuda")
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        with open_slide(wsi_dir / OME) as reader:
            read_patches(reader, COORDS[:1], 0, 224, device="tpu")


def test_decode_device_errors_name_the_flag_and_the_backend(wsi_dir, tmp_path):
    with pytest.raises(ValueError, match="--decode-device cuda decodes with cuCIM; .* backend 'openslide'"):
        TileConfig(decode_device="cuda", backend="openslide", save_tiles="jpg")
    with pytest.raises(ValueError, match="--decode-device must be cpu or cuda"):
        TileConfig(decode_device="gpu")
    if not _gpu():
        with pytest.raises(ValueError, match="--decode-device cuda: no CUDA GPU is visible"):
            TileConfig(decode_device="cuda", save_tiles="jpg")
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            open_slide(wsi_dir / CMU, device="cuda")
        done = subprocess.run(
            [sys.executable, "-m", "clusiam_fast.tile", str(wsi_dir / CMU), "--out", str(tmp_path)]
            + ["--save-tiles", "jpg", "--decode-device", "cuda"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and "--decode-device cuda: no CUDA GPU is visible" in done.stderr
    check_decode_device("cpu", "openslide")  # cpu works with any backend


def test_cpu_decode_device_tiles_as_before(wsi_dir, tmp_path):
    a = tile_slide(wsi_dir / CMU, tmp_path / "a", TileConfig(save_tiles="png"))
    b = tile_slide(wsi_dir / CMU, tmp_path / "b", TileConfig(save_tiles="png", decode_device="cpu"))
    assert a == b
    names = sorted(p.name for p in (tmp_path / "a" / "tiles" / "CMU-1-Small-Region").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "tiles" / "CMU-1-Small-Region").iterdir())


@pytest.mark.cuda
@pytest.mark.skipif(not _gpu(), reason="needs cuCIM and a visible CUDA GPU")
def test_gpu_decoded_patches_match_the_cpu_ones(wsi_dir, tmp_path):
    import torch

    with open_slide(wsi_dir / CMU, "cucim") as cpu:
        expected = read_patches(cpu, COORDS, 0, 224)
    with open_slide(wsi_dir / CMU, device="cuda") as gpu:
        assert gpu.backend == "cucim"
        batch = read_patches(gpu, COORDS, 0, 224, device="cuda")
        assert isinstance(batch, torch.Tensor) and batch.is_cuda and batch.dtype == torch.uint8
        assert tuple(batch.shape) == (4, 224, 224, 3)
        got = batch.cpu().numpy()
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 2  # JPEG decoders may round differently
    row = tile_slide(wsi_dir / CMU, tmp_path, TileConfig(save_tiles="png", decode_device="cuda"))
    assert len(list((tmp_path / "tiles" / "CMU-1-Small-Region").glob("*.png"))) == row["num_patches"]
    with pytest.raises(SlideError, match="needs the cuCIM backend"):
        tile_slide(wsi_dir / OME, tmp_path, TileConfig(save_tiles="png", decode_device="cuda"))
