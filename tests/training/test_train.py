"""The trainer end to end on real PCam patches: every method, exact resume, AMP, errors, non-finite loss, demo.

Runs are tiny (resnet18, crop 32, batch 8, 48 patches = 6 steps per epoch) so the
file stays within the CI budget on a 2-core machine.
"""

from __future__ import annotations

import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from train_cases import file_digest, read_rows, small_config

from clusiam_fast.models import build_model, load_checkpoint
from clusiam_fast.train import main as cli_main
from clusiam_fast.training import CollapseWarning, NonFiniteLossError, autocast_context, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on 2 shared cores


@pytest.mark.parametrize(
    "method,extra",
    [
        ("clusiam", {}),
        ("clubyol", {}),
        ("simsiam", {}),
        ("byol", {}),
        ("clusiam", {"gumbel": False}),
        ("clusiam", {"alpha": 1.0}),
        ("clusiam", {"projector_end": "linear"}),
    ],
    ids=["clusiam", "clubyol", "simsiam", "byol", "no-gumbel", "alpha1", "projector-linear"],
)
def test_every_method_trains_one_epoch(patches, tmp_path, method, extra):
    result = train(small_config(patches, tmp_path / "run", method=method, **extra))
    assert result.status == "complete" and result.step == 6
    (row,) = read_rows(tmp_path / "run" / "log.csv")
    assert math.isfinite(float(row["loss"])) and math.isfinite(float(row["inv_loss"]))
    assert 0.5 < float(row["projection_std"]) < 1.5  # far from collapse after one short epoch
    assert 0.1 < float(row["backbone_std"]) < 1.5 and float(row["backbone_rankme"]) > 2
    assert row["partial"] == "0"
    assert float(row["images_per_s"]) > 0
    assert 0 < float(row["mfu"]) < 1 and row["memory_peak_gib"] == ""  # MFU against a measured CPU mm; no GPU
    steps = read_rows(tmp_path / "run" / "steps.csv")
    assert [int(r["step"]) for r in steps] == list(range(1, 7))
    assert float(steps[0]["lr"]) > float(steps[-1]["lr"])  # cosine decay per step
    assert (tmp_path / "run" / "training.png").stat().st_size > 10_000

    model, config = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert config["method"] == method and model.features(torch.zeros(2, 3, 32, 32)).shape == (2, 512)
    if method in ("clusiam", "clubyol"):
        assert math.isfinite(float(row["cluster_loss"]))
        assert int(row["active_clusters_gumbel"]) > 1  # 96 assignments with Gumbel noise over K = 10
        assert int(row["active_clusters"]) >= 1
        if extra.get("gumbel") is False:  # zero noise: the loss's assignment is the plain argmax
            assert row["active_clusters"] == row["active_clusters_gumbel"]
    else:
        assert row["cluster_loss"] == "" and row["active_clusters"] == ""


def test_alpha_one_leaves_the_predictor_untrained(patches, tmp_path):
    """alpha = 1: only the cluster loss; the invariance term (the predictor's only signal) gets zero weight."""
    cfg = small_config(
        patches, tmp_path / "run", method="clusiam", alpha=1.0, max_steps=2, weight_decay=0.0, fix_pred_lr=False
    )
    torch.manual_seed(cfg.seed)  # the trainer's initial weights
    initial = build_model("clusiam", num_clusters=10)
    train(cfg)
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for name, param in model.predictor.named_parameters():
        assert torch.equal(param, dict(initial.predictor.named_parameters())[name]), name
    assert not torch.equal(model.cluster_assigner.weight, initial.cluster_assigner.weight)
    assert not torch.equal(model.backbone.conv1.weight, initial.backbone.conv1.weight)


def test_interrupt_then_resume_equals_an_uninterrupted_run(patches, tmp_path):
    """Ctrl-C mid-epoch saves; --resume then gives bitwise the same weights, optimiser state and logs.

    Exact because every random draw is restored or derived from (seed, epoch, index):
    data order (sampler seed + epoch), each sample's augmentation, the Gumbel noise
    generator, and the partial epoch's meters. The uninterrupted run uses 2 loader
    workers and the interrupted one none: augmentation does not depend on workers.
    """
    straight = train(small_config(patches, tmp_path / "a", method="clusiam", epochs=2, workers=2))

    def press_ctrl_c(step: int) -> None:
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    first = train(small_config(patches, tmp_path / "b", method="clusiam", epochs=2), on_step=press_ctrl_c)
    assert first.status == "interrupted" and first.step == 4
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["epoch_step"], saved["step"]) == (0, 4, 4)
    resumed = train(small_config(patches, tmp_path / "b", method="clusiam", epochs=2, resume=True))
    assert resumed.status == "complete" and resumed.step == straight.step == 12

    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    keys = (
        "loss",
        "inv_loss",
        "cluster_loss",
        "active_clusters",
        "active_clusters_gumbel",
        "projection_std",
        "backbone_std",
        "backbone_rankme",
        "assigner_entropy",
    )
    assert [[r[k] for k in keys] for r in read_rows(tmp_path / "a" / "log.csv")] == [
        [r[k] for k in keys] for r in read_rows(tmp_path / "b" / "log.csv")
    ]


def test_amp_on_cpu_uses_bfloat16_and_trains(patches, tmp_path):
    model = build_model("clusiam", num_clusters=10)
    with autocast_context(torch.device("cpu"), torch.bfloat16):
        out = model(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))
    assert out.z1.dtype == torch.bfloat16 and out.a1.dtype == torch.bfloat16
    result = train(small_config(patches, tmp_path / "run", method="clusiam", amp=True, max_steps=3))
    assert result.status == "max_steps"
    steps = read_rows(tmp_path / "run" / "steps.csv")
    assert len(steps) == 3 and all(math.isfinite(float(r["loss"])) for r in steps)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["config"]["amp"] is True


def test_export_backbone_loads_into_torchvision(patches, tmp_path):
    import torchvision

    out = tmp_path / "backbone.pt"
    result = train(small_config(patches, tmp_path / "run", method="simsiam", max_steps=1, export_backbone=str(out)))
    assert result.backbone == out
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    model, _ = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert torch.equal(net.conv1.weight, model.backbone.conv1.weight)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(patches, tmp_path):
    run = tmp_path / "run"
    train(small_config(patches, run, method="clusiam"))
    before = {name: file_digest(run / name) for name in ("checkpoint.pt", "log.csv")}
    # lr 1e30: weight decay alone multiplies the weights by ~-1e26 per step -> inf -> NaN.
    with pytest.raises(NonFiniteLossError, match="non-finite loss at epoch 2.*checkpoint.pt \\(epoch 1\\)"):
        train(small_config(patches, run, method="clusiam", epochs=2, lr=1e30, resume=True))
    assert {name: file_digest(run / name) for name in before} == before


def test_unreadable_image_is_reported_once_and_replaced(patches, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for src in sorted(patches.iterdir())[:15]:
        (data / src.name).symlink_to(src.resolve())
    (data / "broken.jpg").write_bytes(b"not a jpeg at all")
    result = train(small_config(data, tmp_path / "run", method="simsiam", epochs=2))
    rows = read_rows(tmp_path / "run" / "log.csv")
    assert result.step == 4 and [r["skipped_images"] for r in rows] == ["1", "1"]
    out = capsys.readouterr()
    text = out.out + out.err
    assert text.count("skipped unreadable image: ") == 1, text  # named at epoch 1, counted at epoch 2
    assert "skipped 1 unreadable image(s) named before" in text


def test_nan_or_inf_pixels_are_named_and_counted_like_an_unreadable_image(patches, tmp_path, capsys):
    """A float TIFF (a real patch in [0, 1]) with NaN and Inf pixels: left out, named and counted, never set to 0."""
    import numpy as np
    import tifffile
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    for src in sorted(patches.iterdir())[:15]:
        (data / src.name).symlink_to(src.resolve())
    pixels = np.asarray(Image.open(sorted(patches.iterdir())[20]), dtype=np.float32) / 255
    pixels[:4, :4, 0], pixels[10, 10, 2] = np.nan, np.inf
    tifffile.imwrite(data / "float_nan.tif", pixels, photometric="rgb")
    result = train(small_config(data, tmp_path / "run", method="simsiam", epochs=2))
    assert result.step == 4 and [r["skipped_images"] for r in read_rows(tmp_path / "run" / "log.csv")] == ["1", "1"]
    out = capsys.readouterr()
    (line,) = [line for line in (out.out + out.err).splitlines() if "skipped unreadable image: " in line]
    assert "float_nan.tif" in line and f"17 of {pixels.size} pixel values are NaN or Inf" in line, line


def test_data_errors_name_the_path(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match=f"{re.escape(str(empty))} holds no images"):
        train(small_config(empty, tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path / 'missing'))} does not exist"):
        train(small_config(tmp_path / "missing", tmp_path / "run"))

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for i in range(3):
        (corrupt / f"p{i}.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(
        ValueError, match=f"data {re.escape(str(corrupt))}: .*none of the 3 sampled images could be read"
    ):
        train(small_config(corrupt, tmp_path / "run"))

    # The CLI turns them into one line on stderr and exit status 2.
    assert cli_main([str(empty), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert str(empty) in capsys.readouterr().err


def test_too_few_images_for_a_batch_and_existing_run(patches, tmp_path):
    with pytest.raises(ValueError, match="make no full batch of 64"):
        train(small_config(patches, tmp_path / "run", batch_size=64))
    train(small_config(patches, tmp_path / "done", max_steps=1))
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(small_config(patches, tmp_path / "done", max_steps=1))


def test_cli_resume_keeps_saved_settings_and_continues(patches, tmp_path):
    out = tmp_path / "run"
    args = [
        str(patches),
        "--out",
        str(out),
        "--crop-size",
        "32",
        "--batch-size",
        "8",
        "--num-clusters",
        "10",
        "--epochs",
        "2",
        "--workers",
        "0",
        "--max-steps",
        "2",
        "--no-progress",
        "--no-tensorboard",
        "--max-stat-images",
        "64",
        "--method",
        "clubyol",
    ]
    assert cli_main(args) == 0
    # Resume from the run folder alone: method, data, crop... come from the checkpoint.
    assert cli_main(["--out", str(out), "--resume", "--max-steps", "5", "--no-progress"]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 5 and ckpt["config"]["method"] == "clubyol" and ckpt["config"]["crop_size"] == 32
    # Changing what defines the model is refused.
    with pytest.raises(ValueError, match="num_clusters=10"):
        train(small_config(patches, out, method="clubyol", num_clusters=20, resume=True))


def test_demo_generates_tissue_patches_and_trains(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli_main(
        [
            "--demo",
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--crop-size",
            "32",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--no-progress",
            "--amp",
        ]
    )
    assert code == 0
    pngs = sorted((out / "demo_patches").glob("*.png"))
    assert len(pngs) == 512
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (
        ckpt["step"] == 2
        and ckpt["config"]["num_clusters"] == 16
        and Path(ckpt["config"]["data"]) == out / "demo_patches"
    )
    for name in ("log.csv", "steps.csv", "training.png", "norm_stats.json", "train_config.json"):
        assert (out / name).is_file(), name
    captured = capsys.readouterr()
    assert f"outputs in {out}" in captured.out + captured.err


def test_dali_loader_plugs_into_the_trainer(patches, tmp_path):
    pytest.importorskip("nvidia.dali")
    result = train(small_config(patches, tmp_path / "run", method="clusiam", loader="dali", max_steps=2, workers=1))
    assert result.status == "max_steps" and result.step == 2
    steps = read_rows(tmp_path / "run" / "steps.csv")
    assert all(math.isfinite(float(r["loss"])) for r in steps)


def test_trains_straight_from_slides_via_the_tiler_manifest(wsi_dir, tmp_path):
    pytest.importorskip("h5py")
    from clusiam_fast.tile import main as tile_main

    tiles = tmp_path / "tiles"
    assert tile_main([str(wsi_dir / "CMU-1-Small-Region.svs"), "--out", str(tiles)]) == 0
    result = train(small_config(tiles / "manifest.csv", tmp_path / "run", method="clusiam", max_steps=2, workers=1))
    assert result.step == 2
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["norm_stats"]["fingerprint"].startswith("manifest:")
    assert all(math.isfinite(float(r["loss"])) for r in read_rows(tmp_path / "run" / "steps.csv"))


def test_collapse_monitor_warns_when_it_falls_below_the_level(patches, tmp_path):
    # A healthy run sits near 1.0; a warning level above that must fire at the epoch end.
    with pytest.warns(CollapseWarning, match="collapse monitor"):
        train(small_config(patches, tmp_path / "run", method="simsiam", collapse_warn=1.5))


def test_ctrl_c_on_the_cli_with_loader_workers_saves_and_resumes(patches, tmp_path):
    """A real Ctrl-C (SIGINT to the whole process group, workers included) mid-run: exit 130, checkpoint, resume."""
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [
        str(patches),
        "--out",
        str(out),
        "--crop-size",
        "32",
        "--batch-size",
        "8",
        "--num-clusters",
        "10",
        "--epochs",
        "30",
        "--workers",
        "2",
        "--no-progress",
        "--no-tensorboard",
        "--max-stat-images",
        "64",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusiam_fast.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    lines = []
    for line in proc.stdout:  # wait until the first epoch is done, then press Ctrl-C
        lines.append(line)
        if line.startswith("epoch 1:"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    lines.extend(proc.stdout)
    assert proc.wait(timeout=120) == 130, "".join(lines)
    text = "".join(lines)
    assert "SIGINT received" in text and "--resume to continue exactly" in text
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert 6 <= saved["step"] < 180 and not saved["complete"]
    epochs = saved["epoch"] + 1  # finish the interrupted epoch
    assert cli_main(["--out", str(out), "--resume", "--epochs", str(epochs), "--no-progress"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 6 * epochs


def test_loader_workers_stop_with_the_run(patches, tmp_path):
    # Persistent workers left to interpreter exit deadlock it (exit joins them after a SIGTERM they
    # ignore, while they wait for their live parent): the run must stop them itself.
    # With the garbage collector off, nothing but the run itself can stop them (the trainer's reference
    # cycles would keep them alive, as at exit).
    import gc
    import multiprocessing

    gc.disable()
    try:
        result = train(small_config(patches, tmp_path / "run", method="simsiam", epochs=2, workers=1))
        assert result.status == "complete"
        assert multiprocessing.active_children() == []
    finally:
        gc.enable()
        for child in multiprocessing.active_children():  # on failure: else pytest's own exit would hang
            child.kill()
