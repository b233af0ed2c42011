"""Feature extraction end to end: a freshly trained checkpoint and its exported backbone, on real patches."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clusiam_fast.extract import main
from clusiam_fast.extraction.normalisation import build_transform
from clusiam_fast.extraction.pipeline import extract
from clusiam_fast.formats.feature_bags import load_bags, read_bag


@pytest.fixture(scope="module")
def trained_run(crc_dir, tmp_path_factory) -> Path:
    """Two CluSiam training steps on crc-mini (crop 32, K = 8) with the project's trainer."""
    from clusiam_fast.train import main as train_main

    out = tmp_path_factory.mktemp("run")
    rc = train_main(
        [
            str(crc_dir),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--crop-size",
            "32",
            "--num-clusters",
            "8",
            "--workers",
            "0",
            "--no-progress",
            "--no-tensorboard",
            "--max-stat-images",
            "32",
            "--export-backbone",
            str(out / "backbone.pt"),
        ]
    )
    assert rc in (0, None) and (out / "checkpoint.pt").is_file() and (out / "backbone.pt").is_file()
    return out


def _images(bag, root: Path, size: int) -> tuple[torch.Tensor, list[float], list[float]]:
    from clusiam_fast.data.patch_folder import load_rgb

    mean, std = bag.attrs["mean"], bag.attrs["std"]
    t = build_transform(mean, std, resize=size)
    return torch.stack([t(load_rgb(root / p)) for p in bag.paths]), mean, std


def test_trainer_checkpoint_gives_features_probabilities_and_clusters(trained_run, crc_dir, tmp_path):
    from clusiam_fast.models import load_checkpoint

    out = tmp_path / "feats"
    assert (
        main(
            [
                str(trained_run / "checkpoint.pt"),
                str(crc_dir),
                "--out",
                str(out),
                "--resize",
                "32",
                "--workers",
                "0",
                "--batch-size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads((out / "extract.json").read_text())
    stats = json.loads((trained_run / "norm_stats.json").read_text())
    assert summary["normalisation_from"].startswith("checkpoint") and summary["mean"] == pytest.approx(stats["mean"])
    assert summary["num_clusters"] == 8 and summary["feature_dim"] == 512 and summary["num_failed_patches"] == 0
    with open(out / "index.csv") as f:
        index = list(csv.DictReader(f))
    assert sorted(r["slide_id"] for r in index) == ["crc-val-he-7k", "kather2016"]  # one bag per image folder
    model, _ = load_checkpoint(trained_run / "checkpoint.pt")
    for bag in load_bags(out):
        assert bag.features.shape == (len(bag.paths), 512) and bag.probs.shape == (len(bag.paths), 8)
        np.testing.assert_allclose(bag.probs.sum(1), 1.0, atol=1e-5)
        assert np.array_equal(bag.clusters, bag.probs.argmax(1))
        assert bag.attrs["method"] == "clusiam" and bag.attrs["num_clusters"] == 8
        x, _, _ = _images(bag, crc_dir, 32)
        with torch.no_grad():  # the same numbers as the model's own API
            np.testing.assert_allclose(bag.features, model.features(x).numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(
                bag.probs, torch.softmax(model.cluster_logits(x), 1).numpy(), rtol=1e-4, atol=1e-5
            )


def test_exported_backbone_gives_the_same_features(trained_run, crc_dir, tmp_path):
    a = extract(
        trained_run / "checkpoint.pt", crc_dir / "crc-val-he-7k", tmp_path / "a", resize=32, workers=0, progress=False
    )
    b = extract(
        trained_run / "backbone.pt",
        crc_dir / "crc-val-he-7k",
        tmp_path / "b",
        resize=32,
        workers=0,
        progress=False,
        fp16=True,
    )
    assert (
        a["encoder"] == "checkpoint"
        and b["encoder"] == "backbone"
        and b["arch"] == "resnet18"
        and b["num_clusters"] == 0
    )
    assert b["mean"] == pytest.approx(a["mean"])  # the same normalisation as the checkpoint
    assert b["normalisation_from"].endswith("norm_stats.json")  # found beside the exported file
    (bag_a,), (bag_b,) = load_bags(tmp_path / "a"), load_bags(tmp_path / "b")
    assert bag_a.slide_id == bag_b.slide_id == "crc-val-he-7k" and bag_b.probs is None and bag_b.clusters is None
    assert bag_b.features.dtype == np.float16
    np.testing.assert_allclose(bag_b.features.astype(np.float32), bag_a.features, rtol=2e-3, atol=2e-3)


def test_patch_folder_bags_and_unreadable_images(pcam_dir, tmp_path):
    """Bags are the folders that hold images; a corrupt image is reported by name and skipped."""
    import torchvision

    data = tmp_path / "slides"
    for sub, label, start in (("case1/slideA", "0", 0), ("case1/slideB", "1", 0), ("case2", "0", 5)):
        (data / sub).mkdir(parents=True)
        for p in sorted((pcam_dir / "valid" / label).glob("*.jpg"))[start : start + 5]:
            os.symlink(p, data / sub / p.name)
    os.symlink(sorted((pcam_dir / "valid" / "1").glob("*.jpg"))[9], data / "loose.jpg")
    (data / "case1" / "slideB" / "zz_corrupt.png").write_bytes(b"not a png")
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, tmp_path / "bb.pt")
    with pytest.warns(UserWarning, match="ImageNet"):
        summary = extract(tmp_path / "bb.pt", data, tmp_path / "out", batch_size=4, workers=0, progress=False)
    bags = {b.slide_id: b for b in load_bags(tmp_path / "out")}
    assert sorted(bags) == ["case1/slideA", "case1/slideB", "case2", "slides"]
    assert (tmp_path / "out" / "bags" / "case1__slideA.h5").is_file()
    assert [len(bags[k]) for k in sorted(bags)] == [5, 5, 5, 1] and bags["slides"].paths == ["loose.jpg"]
    assert (
        summary["num_failed_patches"] == 1
        and summary["failed_patches"]["case1/slideB"][0]["patch"] == "case1/slideB/zz_corrupt.png"
    )
    assert read_bag(tmp_path / "out" / "bags" / "case1__slideB.h5").attrs["num_failed"] == 1
    net.fc = torch.nn.Identity()
    x, _, _ = _images(bags["case1/slideA"], data, 96)
    with torch.no_grad():
        np.testing.assert_allclose(bags["case1/slideA"].features, net.eval()(x).numpy(), rtol=1e-4, atol=1e-4)


def test_resnet_architecture_is_read_off_the_state_dict(tmp_path):
    import torchvision

    from clusiam_fast.extraction.encoders.checkpoint import resnet_from_state_dict

    for arch in ("resnet34", "resnet50"):
        state = {k: v for k, v in getattr(torchvision.models, arch)().state_dict().items() if not k.startswith("fc.")}
        model, found = resnet_from_state_dict({f"module.{k}": v for k, v in state.items()})
        assert found == arch and isinstance(model.fc, torch.nn.Identity)
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        resnet_from_state_dict({"weight": torch.zeros(3)})


def test_bad_checkpoints_and_data_are_named(tmp_path, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"\x00 definitely not a checkpoint")
    assert main([str(bad), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "garbage.pt" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    assert main([str(tmp_path / "other.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "other.pt" in capsys.readouterr().err


@pytest.mark.cuda
def test_amp_on_gpu_matches_float32(trained_run, crc_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    a = extract(
        trained_run / "checkpoint.pt", crc_dir, tmp_path / "cpu", resize=64, device="cpu", workers=0, progress=False
    )
    b = extract(
        trained_run / "checkpoint.pt",
        crc_dir,
        tmp_path / "gpu",
        resize=64,
        device="cuda",
        amp=True,
        workers=0,
        progress=False,
    )
    assert b["amp"] and not a["amp"]
    for x, y in zip(load_bags(tmp_path / "cpu"), load_bags(tmp_path / "gpu")):
        np.testing.assert_allclose(y.features, x.features, rtol=5e-2, atol=5e-2)
