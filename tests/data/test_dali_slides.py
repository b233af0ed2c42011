"""The DALI pipeline read straight from slides: the patches it is fed, its views, bad tiles, GPU decode."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from cohort_slides import zeroed_copy  # noqa: E402
from test_dali_parity import colour_summary, ks_critical, ks_statistic  # noqa: E402

from clusiam_fast.data.augment import paper_augmentation  # noqa: E402
from clusiam_fast.data.dali import build_dali_loader  # noqa: E402
from clusiam_fast.data.dali_sources import SlideSource, epoch_plan  # noqa: E402
from clusiam_fast.data.slide_dataset import SlidePatchDataset  # noqa: E402
from clusiam_fast.tiling import TileConfig, tile_slides  # noqa: E402

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
MEAN, STD = (0.70, 0.54, 0.69), (0.22, 0.27, 0.20)


@pytest.fixture(scope="module")
def manifest(wsi_dir, tmp_path_factory) -> Path:
    """CMU read at 448 px and resized to 224 (1 um/px), TCGA at level 1 as read (0.5 um/px)."""
    out = tmp_path_factory.mktemp("dali_slides")
    for name, mpp in ((CMU, 1.0), (TCGA, 0.5)):
        report = tile_slides([wsi_dir / name], out, TileConfig(target_mpp=mpp, slide_mpp=0.25), progress=False)
        assert report.ok, report.summary()
    return out / "manifest.csv"


def source_patches(source: SlideSource, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """What the source feeds the augmentation, one epoch of ``order`` (DALI CPU pipeline)."""
    from nvidia.dali import pipeline_def

    def graph():
        return source.graph(order=order, batch_size=batch_size, start=0, gpu=False)

    pipe = pipeline_def(graph)(
        batch_size=batch_size, num_threads=1, device_id=None, prefetch_queue_depth=2, **source.pipeline_kwargs(False)
    )
    pipe.build()
    out = []
    for _ in range(len(order) // batch_size):
        (batch,) = pipe.run()
        out += [np.array(batch.at(i)) for i in range(batch_size)]
    return out


def test_cpu_slide_source_feeds_the_torch_paths_pixels(manifest):
    """Before augmentation the DALI slide source gives the torch loader's patch pixels (max |diff| <= 2)."""
    source = SlideSource(manifest, workers=1)
    reference = SlidePatchDataset(manifest)
    assert sorted(s.read_size for s in reference.slides) == [224, 449]  # one resized slide, one as read
    order = epoch_plan(len(source), seed=3, epoch=1, shard_id=0, num_shards=1)
    patches = source_patches(source, order, batch_size=8)
    assert len(patches) == len(order) // 8 * 8
    for index, patch in zip(order, patches):
        expected = np.asarray(reference[int(index)])
        assert patch.shape == expected.shape == (224, 224, 3)
        assert int(np.abs(patch.astype(int) - expected).max()) <= 2


def test_slide_views_match_the_torchvision_recipe(manifest):
    """After augmentation: colour statistics of DALI's views and torchvision's on the same slide patches."""
    crop, epochs = 32, 12
    loader = build_dali_loader(manifest, batch_size=10, crop_size=crop, mean=MEAN, std=STD, seed=0, py_workers=1)
    dali = torch.cat([torch.cat([v1, v2]) for _ in range(epochs) for v1, v2 in loader])
    torch.manual_seed(0)
    dataset = SlidePatchDataset(manifest)
    transform = paper_augmentation(crop, MEAN, STD)
    images = [dataset[i] for i in range(len(dataset))]
    tv = torch.stack([transform(img) for _ in range(epochs) for img in images for _ in range(2)])
    ours, theirs = colour_summary(dali), colour_summary(tv)
    # Tolerances as in test_dali_parity (bias + 4 s.d.), widened for ~2,000 views of 90 patches.
    np.testing.assert_allclose(ours["mean"], theirs["mean"], atol=0.02)
    np.testing.assert_allclose(ours["std"], theirs["std"], atol=0.015)
    n, m = len(ours["view_mean"]), len(theirs["view_mean"])
    assert ks_statistic(ours["view_mean"], theirs["view_mean"]) < ks_critical(n, m)
    assert abs(ours["gray"] - theirs["gray"]) < 0.05


def test_corrupt_tile_mid_epoch_is_named_and_replaced(wsi_dir, tmp_path, capfd):
    """Tiles of the slide break after tiling: each unreadable patch is named and replaced; the epoch goes on."""
    slide = tmp_path / "slide.svs"
    zeroed_copy(wsi_dir, slide, tiles=[])  # a clean copy to tile
    report = tile_slides([slide], tmp_path / "tiles", TileConfig(), progress=False)
    assert report.ok, report.summary()
    zeroed_copy(wsi_dir, slide)  # now its tissue tiles are zeros
    log, handler = logging.getLogger("clusiam_fast.data.dali"), logging.StreamHandler()  # the reader process's log
    log.addHandler(handler)
    try:
        loader = build_dali_loader(
            tmp_path / "tiles" / "manifest.csv", batch_size=8, crop_size=32, mean=MEAN, std=STD, py_workers=1
        )
        batches = list(loader)
    finally:
        log.removeHandler(handler)
    assert len(batches) == len(loader) and all(v.shape == (8, 3, 32, 32) for v, _ in batches)
    err = capfd.readouterr().err
    assert "skipping unreadable slide patch slide (x=" in err and "Corrupt" in err


@pytest.mark.cuda
def test_gpu_decoded_views_stay_on_the_gpu_and_match_cpu_pixels(manifest):
    """Must pass on the first GPU run: cuCIM GPU decode -> DALI GPU augmentation, no host copy."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dataset = SlidePatchDataset(manifest, decode_device="cuda")
    reference = SlidePatchDataset(manifest)
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        gpu = dataset.read_batch([index])[0]
        assert gpu.is_cuda and gpu.shape == (224, 224, 3)
        # JPEG decoders may differ by a level; the GPU resize (CMU) is antialiased bilinear as PIL's
        assert int((gpu.cpu().int() - torch.from_numpy(reference.read_batch([index])[0]).int()).abs().max()) <= 4
    loader = build_dali_loader(
        manifest, batch_size=10, crop_size=64, mean=MEAN, std=STD, device="gpu", decode_device="cuda"
    )
    views = [v1 for v1, _ in loader]
    assert len(views) == len(loader) and all(v.is_cuda and v.shape == (10, 3, 64, 64) for v in views)


def test_decode_device_errors_name_the_flag(manifest, pcam_dir):
    with pytest.raises(ValueError, match="--decode-device"):
        build_dali_loader(manifest, batch_size=8, crop_size=32, mean=MEAN, std=STD, decode_device="gpu")
    with pytest.raises(ValueError, match="cuda decodes with cuCIM; it cannot be used with backend 'openslide'"):
        SlidePatchDataset(manifest, backend="openslide", decode_device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--decode-device cuda"):
            build_dali_loader(manifest, batch_size=8, crop_size=32, mean=MEAN, std=STD, decode_device="cuda")
        with pytest.raises(ValueError, match="--decode-device cuda"):
            SlidePatchDataset(manifest, decode_device="cuda")


def test_gpu_resize_follows_pils_antialiased_bilinear(manifest):
    """The resize GPU-decoded patches get (torch, run here on CPU tensors) vs the PIL resize of the CPU path."""
    from clusiam_fast.data.slide_dataset import _fit

    dataset = SlidePatchDataset(manifest)
    info = dataset.slides[0]
    assert info.read_size != info.output_size
    reader = dataset.reader(0)
    for x, y in info.coords[:4]:
        region = np.ascontiguousarray(reader.read_region((int(x), int(y)), info.read_level, info.read_size)[:, :, :3])
        pil, ours = _fit(region, info.output_size), _fit(torch.from_numpy(region), info.output_size).numpy()
        assert ours.shape == pil.shape == (224, 224, 3)
        diff = np.abs(ours.astype(int) - pil)
        assert diff.max() <= 3 and diff.mean() < 0.5, (diff.max(), diff.mean())


@pytest.mark.cuda
def test_gpu_decode_refuses_ome_tiff_by_name(wsi_dir, tmp_path):
    """Must pass on the first GPU run: cuCIM reads the OME-TIFF's JPEG tiles with wrong colours, so it stays on the CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    assert tile_slides([wsi_dir / "OS-1-detail.ome.tif"], tmp_path, TileConfig(), progress=False).ok
    dataset = SlidePatchDataset(tmp_path / "manifest.csv", decode_device="cuda")
    with pytest.raises(OSError, match="OS-1-detail.*(tifffile|on the CPU)"):
        dataset.read_batch([0])
