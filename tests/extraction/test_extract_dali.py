"""``extract --loader dali`` (DALI CPU mode here) gives the torch path's features; --decode-device errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from clusiam_fast.extract import main  # noqa: E402
from clusiam_fast.extraction.pipeline import extract  # noqa: E402
from clusiam_fast.formats.feature_bags import load_bags  # noqa: E402
from clusiam_fast.tiling import TileConfig, tile_slides  # noqa: E402

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
MEAN, STD = (0.70, 0.54, 0.69), (0.22, 0.27, 0.20)


@pytest.fixture(scope="module")
def cohort(wsi_dir, tmp_path_factory) -> tuple[Path, Path]:
    """CMU (read at 448 px, resized to 224: 1 um/px) and TCGA (level 1) tiled; a random ResNet-18 backbone."""
    import torchvision

    out = tmp_path_factory.mktemp("dali_extract")
    for name, mpp in ((CMU, 1.0), (TCGA, 0.5)):
        report = tile_slides(
            [wsi_dir / name], out / "tiles", TileConfig(target_mpp=mpp, slide_mpp=0.25), progress=False
        )
        assert report.ok, report.summary()
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, out / "bb.pt")
    return out / "tiles" / "manifest.csv", out / "bb.pt"


def _features(cohort, out: Path, **kwargs) -> dict[str, np.ndarray]:
    manifest, backbone = cohort
    summary = extract(
        backbone, manifest, out, batch_size=16, workers=1, progress=False, device="cpu", mean=MEAN, std=STD, **kwargs
    )
    assert summary["num_failed_patches"] == 0 and not summary["failed_slides"]
    assert summary["loader"] == kwargs.get("loader", "torch")
    return {b.slide_id: (b.features, b.coords) for b in load_bags(out)}


def test_dali_cpu_features_match_the_torch_path(cohort, tmp_path, one_thread):
    """As read (no resize): same pixels, same normalisation -> features equal to fp tolerance."""
    torch_bags = _features(cohort, tmp_path / "torch")
    dali_bags = _features(cohort, tmp_path / "dali", loader="dali")
    assert sorted(dali_bags) == sorted(torch_bags) and len(torch_bags) == 2
    for slide_id, (feats, coords) in torch_bags.items():
        np.testing.assert_array_equal(dali_bags[slide_id][1], coords)
        np.testing.assert_allclose(dali_bags[slide_id][0], feats, rtol=1e-4, atol=1e-4)


def test_dali_resize_and_crop_follow_torchvision(cohort, tmp_path, one_thread):
    """--resize/--crop: DALI's antialiased linear resize vs PIL's differ by a grey level or two."""
    torch_bags = _features(cohort, tmp_path / "torch", resize=112, crop=96)
    dali_bags = _features(cohort, tmp_path / "dali", resize=112, crop=96, loader="dali")
    for slide_id, (feats, _) in torch_bags.items():
        other = dali_bags[slide_id][0]
        cos = (feats * other).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(other, axis=1)
        assert cos.min() > 0.995, cos.min()


def test_corrupt_tiles_are_named_and_left_out_as_in_the_torch_path(wsi_dir, cohort, tmp_path, one_thread):
    """Tiles zeroed after tiling: both loaders leave out and name the same patches."""
    from cohort_slides import zeroed_copy

    slide = tmp_path / "slide.svs"
    zeroed_copy(wsi_dir, slide, tiles=[])
    assert tile_slides([slide], tmp_path / "tiles", TileConfig(), progress=False).ok
    zeroed_copy(wsi_dir, slide)
    failed = {}
    for loader in ("torch", "dali"):
        summary = extract(
            cohort[1], tmp_path / "tiles" / "manifest.csv", tmp_path / loader, batch_size=16, workers=1,
            progress=False, device="cpu", mean=MEAN, std=STD, resize=64, loader=loader,
        )  # fmt: skip
        failed[loader] = sorted(f["patch"] for f in summary["failed_patches"].get("slide", []))
        assert summary["num_patches"] > 0 and summary["num_failed_patches"] == len(failed[loader])
    assert failed["dali"] == failed["torch"] and len(failed["torch"]) > 0


def test_loader_and_decode_device_errors_are_one_line(cohort, tmp_path, crc_dir, capsys):
    manifest, backbone = cohort
    rc = main([str(backbone), str(crc_dir), "--out", str(tmp_path / "a"), "--loader", "dali", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--loader dali reads patches from slides" in err and "--loader torch" in err
    if not torch.cuda.is_available():
        rc = main([str(backbone), str(manifest), "--out", str(tmp_path / "b"), "--decode-device", "cuda", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "--decode-device cuda" in err and ("no CUDA GPU" in err or "needs cuCIM" in err)


@pytest.mark.cuda
def test_gpu_decode_and_dali_gpu_match_the_cpu_path(cohort, tmp_path):
    """Must pass on the first GPU run: cuCIM GPU decode + DALI GPU pipeline vs the CPU torch path."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    reference = _features(cohort, tmp_path / "torch")
    manifest, backbone = cohort
    for loader in ("torch", "dali"):
        out = tmp_path / f"gpu_{loader}"
        extract(
            backbone, manifest, out, batch_size=16, workers=1, progress=False, device="cuda", amp=False,
            mean=MEAN, std=STD, loader=loader, decode_device="cuda",
        )  # fmt: skip
        bags = {b.slide_id: b.features for b in load_bags(out)}
        for slide_id, (feats, _) in reference.items():
            np.testing.assert_allclose(bags[slide_id], feats, rtol=2e-2, atol=2e-2)
