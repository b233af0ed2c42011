"""MFU's parts: the FLOPs of a training step counted on the meta device, and the peak it is held against."""

from __future__ import annotations

import pytest
import torch

from clusiam_fast.models import build_model
from clusiam_fast.training.flops import MfuMeter, measured_mm_flops, peak_flops, step_flops_per_sample

RESNET18_FORWARD_224 = 3.64e9  # 1.82 GMAC per image (torchvision's model card), 2 FLOPs a MAC


def test_simsiam_step_counts_forward_and_backward_of_both_views():
    flops = step_flops_per_sample(build_model("simsiam", "resnet18", num_clusters=None), 224)
    # forward + backward (about twice the forward; no input gradient) of two views, plus the small heads
    assert 5.6 * RESNET18_FORWARD_224 < flops < 6.3 * RESNET18_FORWARD_224, flops / 1e9


def test_byol_adds_the_target_encoders_forward_of_both_views():
    simsiam = step_flops_per_sample(build_model("simsiam", "resnet18", num_clusters=None), 224)
    byol = step_flops_per_sample(build_model("byol", "resnet18", num_clusters=None), 224)
    assert byol - simsiam == pytest.approx(2 * RESNET18_FORWARD_224, rel=0.05), (byol - simsiam) / 1e9


def test_the_count_leaves_the_model_where_it_was():
    model = build_model("clusiam", "resnet18", num_clusters=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step_flops_per_sample(model, 64)
    assert all(v.device.type == "cpu" for v in model.state_dict().values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_cpu_peak_is_a_measured_mm_and_mfu_is_a_fraction_of_it():
    peak, source = peak_flops(torch.device("cpu"), torch.float32)
    assert peak == measured_mm_flops("cpu", torch.float32) > 1e8 and "measured" in source
    # under --amp the peak is the faster of bf16 and float32 products (a CPU without native bf16 emulates it)
    assert peak_flops(torch.device("cpu"), torch.bfloat16)[0] >= peak
    meter = MfuMeter(build_model("simsiam", "resnet18", num_clusters=None), 32, torch.device("cpu"), None, world=2)
    assert meter(10.0) == pytest.approx(meter.flops_per_sample * 10.0 / (2 * peak))
    assert "GFLOP per two-view sample" in meter.describe()


def test_synchronised_batchnorm_models_are_counted_as_their_batchnorm_twins():
    from clusiam_fast.training.sync_bn import ProcessGroupBatchNorm, convert_batchnorm

    model = build_model("clusiam", "resnet18", num_clusters=10)
    synced = convert_batchnorm(build_model("clusiam", "resnet18", num_clusters=10))
    assert step_flops_per_sample(synced, 64) == step_flops_per_sample(model, 64)
    assert any(isinstance(m, ProcessGroupBatchNorm) for m in synced.modules())  # the model itself is left as it was
