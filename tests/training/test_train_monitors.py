"""Collapse monitors that can fail, --stop-on-collapse, and schedules that fit short runs.

The monitors are checked on real PCam patches through the real model forward and
:class:`TrainStep`: a backbone forced to (near-)constant output drives backbone_std to
~0 and RankMe to ~1 while the BatchNorm-ended projection monitor stays near 1; a
collapsed assigner drives assigner_entropy to 0. The loop tests run tiny real
trainings (resnet18, crop 32, batch 8, 48 patches = 6 steps per epoch).
"""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from train_cases import file_digest, read_rows, small_config

from clusiam_fast.models import build_model
from clusiam_fast.train import main as cli_main
from clusiam_fast.training import CollapseError, TrainConfig, TrainStep, train
from clusiam_fast.training.ddp import DistContext
from clusiam_fast.training.monitors import EpochMeter, FeatureWindow, rankme, usage_entropy
from clusiam_fast.training.schedule import build_optimizer, cosine_lr, scaled_lr

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def views(pcam_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of 32 real patches (32 x 32 px, standardised): the two views of a step."""
    files = (
        sorted((pcam_dir / "train" / "0").glob("*.jpg"))[:32] + sorted((pcam_dir / "train" / "1").glob("*.jpg"))[:32]
    )
    x = torch.tensor(np.stack([np.asarray(Image.open(f).convert("RGB").resize((32, 32))) for f in files]))
    x = x.permute(0, 3, 1, 2).float() / 255
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    return x[::2].contiguous(), x[1::2].contiguous()


class NearlyConstantBackbone(nn.Module):
    """A collapsed backbone: the same 512-d vector for every image, plus a 1e-5 input-dependent wobble."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.centre = nn.Parameter(torch.rand(dim, generator=torch.Generator().manual_seed(0)) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wobble = x.flatten(1)[:, : self.centre.numel()]
        return self.centre.expand(x.shape[0], -1) + 1e-5 * wobble


def _epoch_monitors(model, views, steps: int = 3) -> dict:
    """Run ``steps`` real optimiser steps (TrainStep) and return the EpochMeter's row."""
    cfg = TrainConfig(method="clusiam", num_clusters=10, cluster_loss_impl="reference").resolved()
    opt = build_optimizer(model, 0.0001, 0.9, 0.0, cfg.fix_pred_lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = TrainStep(model, opt, scaler, cfg, torch.device("cpu"), torch.Generator().manual_seed(1))
    meter = EpochMeter(10, torch.device("cpu"), feature_dim=512, window=48)
    for _ in range(steps):
        terms, monitors = step(*views)
        assert monitors.features.shape == (32, 512)  # the forward's own backbone features, no extra pass
        meter.update(terms, monitors, 32)
    return meter.summary(DistContext())


def test_backbone_monitors_fall_on_a_collapsed_backbone_while_the_projection_one_stays_near_one(views):
    torch.manual_seed(0)
    healthy = _epoch_monitors(build_model("clusiam", num_clusters=10), views)
    assert 0.3 < healthy["backbone_std"] < 1.2
    assert healthy["backbone_rankme"] > 10
    assert 0.9 < healthy["projection_std"] < 1.1

    torch.manual_seed(0)
    model = build_model("clusiam", num_clusters=10)
    model.backbone = NearlyConstantBackbone()
    collapsed = _epoch_monitors(model, views)
    assert collapsed["backbone_std"] < 1e-3
    assert collapsed["backbone_rankme"] < 1.05
    assert collapsed["projection_std"] > 0.9  # the affine-free BatchNorm rescales the wobble to unit variance


def test_assigner_entropy_falls_when_every_image_goes_to_one_cluster(views):
    torch.manual_seed(0)
    healthy = _epoch_monitors(build_model("clusiam", num_clusters=10), views)
    assert healthy["assigner_entropy"] > 0.5 and healthy["active_clusters"] > 3

    torch.manual_seed(0)
    model = build_model("clusiam", num_clusters=10)
    with torch.no_grad():  # the assigner ignores its input and prefers cluster 3 by far
        model.cluster_assigner.weight.zero_()
        model.cluster_assigner.bias.zero_()
        model.cluster_assigner.bias[3] = 100.0
    collapsed = _epoch_monitors(model, views, steps=1)
    assert collapsed["assigner_entropy"] == 0.0 and collapsed["active_clusters"] == 1
    assert collapsed["projection_std"] > 0.9


def test_rankme_and_usage_entropy_values():
    g = torch.Generator().manual_seed(0)
    assert rankme(torch.eye(64)).item() == pytest.approx(64, rel=1e-3)  # equal singular values: full rank
    assert rankme(torch.ones(100, 32)).item() == pytest.approx(1.0, abs=1e-3)
    assert rankme(torch.zeros(10, 8)).item() == pytest.approx(1.0, abs=1e-3)  # no NaN for dead features
    x = torch.randn(200, 16, generator=g)
    s = np.linalg.svd(x.double().numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(x).item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    assert usage_entropy(torch.ones(8)) == pytest.approx(1.0)
    assert usage_entropy(torch.tensor([0.0, 5.0, 0.0])) == 0.0
    assert usage_entropy(torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(0.5)


def test_feature_window_keeps_the_most_recent_rows():
    window = FeatureWindow(5, 2, torch.device("cpu"))
    assert window.rankme() is None
    rows = torch.arange(14, dtype=torch.float32).reshape(7, 2)
    window.push(rows[:3])
    assert window.filled == 3 and torch.equal(window.buffer[:3], rows[:3])  # fewer than the window: what is there
    window.push(rows[3:7])  # wraps around
    assert window.filled == 5
    assert sorted(window.buffer[:, 0].tolist()) == rows[2:7, 0].tolist()
    state = window.state_dict()
    again = FeatureWindow(5, 2, torch.device("cpu"))
    again.load_state_dict(state)
    again.push(rows[:1])
    window.push(rows[:1])
    assert torch.equal(again.buffer, window.buffer)
    window.push(torch.zeros(9, 2))  # more rows than the window: the last 5
    assert window.filled == 5 and not window.buffer.any()


# ---------------------------------------------------------------------------- the loop


def test_training_logs_every_monitor_each_epoch(patches, tmp_path, capsys):
    train(small_config(patches, tmp_path / "run", method="clusiam", epochs=1))
    (row,) = read_rows(tmp_path / "run" / "log.csv")
    for key in ("backbone_std", "backbone_rankme", "projection_std", "assigner_entropy"):
        assert math.isfinite(float(row[key])), key
    assert 0.1 < float(row["backbone_std"]) < 1.5 and float(row["backbone_rankme"]) > 2
    assert 0 < float(row["assigner_entropy"]) <= 1 and row["partial"] == "0"
    text = capsys.readouterr().out
    assert "backbone std" in text and "RankMe" in text and "projection std" in text and "assigner entropy" in text


def test_stop_on_collapse_stops_with_status_5_and_keeps_the_last_good_checkpoint(patches, tmp_path, capsys):
    """Thresholds no run can meet (std * sqrt(dim) of unit vectors stays below ~1) make every epoch 'collapsed'."""
    run = tmp_path / "run"
    args = [str(patches), "--out", str(run), "--crop-size", "32", "--batch-size", "8", "--num-clusters", "10"]
    args += ["--workers", "0", "--no-progress", "--no-tensorboard", "--max-stat-images", "64", "--epochs", "1"]
    assert cli_main(args) == 0
    good = file_digest(run / "checkpoint.pt")
    capsys.readouterr()
    resume = ["--out", str(run), "--resume", "--epochs", "5", "--stop-on-collapse", "--collapse-min-std", "5"]
    assert cli_main(resume + ["--no-progress"]) == 5
    err = capsys.readouterr().err
    assert "backbone collapse at the end of epoch 3: backbone_std" in err
    assert "< --collapse-min-std 5, 2 epoch(s) in a row" in err
    assert "checkpoint.pt (epoch 1), step 6, is untouched" in err
    assert file_digest(run / "checkpoint.pt") == good
    rows = read_rows(run / "log.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # the collapsed epochs are logged, not saved
    assert torch.load(run / "checkpoint.pt", weights_only=False)["epoch"] == 1


def test_stop_on_collapse_names_rankme_and_a_run_without_a_good_epoch_saves_nothing(patches, tmp_path):
    run = tmp_path / "run"
    cfg = small_config(
        patches, run, method="simsiam", stop_on_collapse=True, collapse_min_rank=1e4, collapse_patience=3
    )
    with pytest.raises(CollapseError, match="backbone_rankme .* < --collapse-min-rank 10000.*no checkpoint"):
        train(cfg)  # the last epoch below a level stops the run even before the patience is used up
    assert not (run / "checkpoint.pt").exists() and len(read_rows(run / "log.csv")) == 1


def test_max_steps_spans_the_cosine_and_stops_mid_epoch_with_a_partial_row(patches, tmp_path, capsys):
    run = tmp_path / "run"
    result = train(small_config(patches, run, method="simsiam", epochs=2, max_steps=10))
    assert result.status == "max_steps" and result.step == 10
    assert "cosine over 10 steps (--max-steps 10)" in capsys.readouterr().out
    init = scaled_lr(0.05, 8)
    lrs = [float(r["lr"]) for r in read_rows(run / "steps.csv")]
    assert lrs == pytest.approx([cosine_lr(init, s, 10) for s in range(10)], rel=1e-5)
    assert lrs[-1] < 0.03 * init  # the last step is near the end of the decay, not mid-way as over --epochs
    rows = read_rows(run / "log.csv")
    assert [(r["epoch"], r["step"], r["partial"]) for r in rows] == [("1", "6", "0"), ("2", "10", "1")]
    assert all(math.isfinite(float(rows[1][k])) for k in ("loss", "backbone_std", "backbone_rankme"))
    assert result.partial["step"] == 10

    resumed = train(small_config(patches, run, method="simsiam", epochs=2, resume=True))  # no --max-steps now
    assert resumed.status == "complete" and resumed.step == 12
    # The run grew past the checkpoint's 10-step cosine: it now spans the run's 12 steps, never lr 0.
    assert "cosine over 12 steps (--epochs 2 x 6 steps (extended from 10 at step 10))" in capsys.readouterr().out
    rows = read_rows(run / "log.csv")
    assert [(r["epoch"], r["step"], r["partial"]) for r in rows] == [("1", "6", "0"), ("2", "12", "0")]
    lrs = [float(r["lr"]) for r in read_rows(run / "steps.csv")]
    assert lrs[10:] == pytest.approx([cosine_lr(init, 10, 12), cosine_lr(init, 11, 12)], rel=1e-5)
    assert min(lrs[10:]) > 0


def test_ctrl_c_mid_epoch_writes_a_partial_row(patches, tmp_path):
    def press_ctrl_c(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(small_config(patches, tmp_path / "run", method="clusiam"), on_step=press_ctrl_c)
    assert result.status == "interrupted"
    (row,) = read_rows(tmp_path / "run" / "log.csv")
    assert (row["epoch"], row["step"], row["partial"]) == ("1", "2", "1")
    assert float(row["assigner_entropy"]) > 0


def test_max_steps_zero_writes_the_initial_checkpoint_and_schedule_steps_overrides_on_resume(patches, tmp_path, capsys):
    run = tmp_path / "run"
    args = [str(patches), "--out", str(run), "--crop-size", "32", "--batch-size", "8", "--num-clusters", "10"]
    args += ["--workers", "0", "--no-progress", "--no-tensorboard", "--max-stat-images", "64", "--log-every", "1"]
    assert cli_main([*args, "--epochs", "2", "--max-steps", "0"]) == 0
    text = capsys.readouterr().out
    assert "checkpoint.pt" in text and "nothing to train" not in text
    saved = torch.load(run / "checkpoint.pt", weights_only=False)
    assert (saved["epoch"], saved["step"], saved["schedule"]) == (0, 0, {"steps": 12, "source": "--epochs 2 x 6 steps"})
    torch.manual_seed(0)
    initial = build_model("clusiam", num_clusters=10)
    assert torch.equal(saved["model"]["backbone.conv1.weight"], initial.backbone.conv1.weight)
    assert read_rows(run / "log.csv") == []

    assert cli_main(["--out", str(run), "--resume", "--max-steps", "2", "--schedule-steps", "20", "--no-progress"]) == 0
    assert "cosine over 20 steps (--schedule-steps, replacing the checkpoint's)" in capsys.readouterr().out
    init = scaled_lr(0.05, 8)
    lrs = [float(r["lr"]) for r in read_rows(run / "steps.csv")]
    assert lrs == pytest.approx([cosine_lr(init, 0, 20), cosine_lr(init, 1, 20)], rel=1e-5)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["schedule"] == {
        "steps": 20,
        "source": "--schedule-steps",
    }
