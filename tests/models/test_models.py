"""Models: shapes, heads as published, BYOL's EMA target, checkpoints and the torchvision export."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from clusiam_fast.models import (
    BYOL,
    METHODS,
    MethodSpec,
    SelfSupervisedModel,
    backbone_state_dict,
    build_backbone,
    build_model,
    export_backbone,
    load_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on 2 shared cores


def _images(n=4, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", METHODS)
def test_forward_shapes_and_typed_result(method):
    torch.manual_seed(0)
    model = build_model(method, num_clusters=7)
    x1, x2 = _images(seed=1), _images(seed=2)
    out = model(x1, x2)
    dim = 2048 if method in ("clusiam", "simsiam") else 256
    for name in ("z1", "z2", "p1", "p2", "t1", "t2"):
        assert getattr(out, name).shape == (4, dim), name
    assert not out.t1.requires_grad and not out.t2.requires_grad  # targets are stop-gradient
    assert out.p1.requires_grad
    assert model.features(x1).shape == (4, 512)
    if method in ("clusiam", "clubyol"):
        assert out.a1.shape == (4, 7) and out.a2.shape == (4, 7)
        assert model.cluster_logits(x1).shape == (4, 7)
    else:
        assert out.a1 is None and out.a2 is None
        with pytest.raises(RuntimeError, match="no cluster head"):
            model.cluster_logits(x1)


def test_clusiam_heads_match_the_published_layout():
    model = build_model("clusiam", num_clusters=100)
    proj = [type(m) for m in model.projector]
    assert proj == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert model.projector[0].in_features == 512 and model.projector[6].out_features == 2048
    assert model.projector[6].bias is None  # BN follows: the bias would cancel
    assert not model.projector[7].affine
    pred = list(model.predictor)
    assert pred[0].bias is None and pred[0].out_features == 512 and pred[-1].bias is not None
    assert model.cluster_projector[0].in_features == 2048 and model.cluster_projector[0].out_features == 512
    assert model.cluster_assigner.out_features == 100
    # zero_init_residual: every residual branch starts at zero
    assert all(
        float(b.bn2.weight.detach().abs().sum()) == 0
        for layer in (model.backbone.layer1, model.backbone.layer4)
        for b in layer
    )


def test_clubyol_heads_and_linear_projector_end():
    model = build_model("clubyol", num_clusters=5, projector_end="linear")
    assert model.projector[-1].out_features == 256 and isinstance(model.projector[-1], nn.Linear)
    assert model.projector[-1].bias is not None  # no BN after it: the bias is a real parameter
    assert model.predictor[0].out_features == 4096 and model.predictor[0].bias is not None
    assert model.cluster_projector[0].out_features == 256


def test_param_groups_cover_trainable_parameters_once():
    for method in METHODS:
        model = build_model(method, num_clusters=3)
        grouped = [p for params in model.param_groups().values() for p in params]
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert len(grouped) == len({id(p) for p in grouped}) == len(trainable), method


def test_byol_target_follows_online_by_ema():
    torch.manual_seed(0)
    model = build_model("byol", ema_momentum=0.9)
    assert isinstance(model, BYOL)
    assert all(not p.requires_grad for p in model.target_parameters())
    online = model.backbone.conv1.weight
    target = model.target_backbone.conv1.weight
    assert torch.equal(online, target)
    with torch.no_grad():
        online.add_(1.0)
    before = target.clone()
    model.update_target()
    torch.testing.assert_close(target, 0.9 * before + 0.1 * online)


def test_unknown_method_and_arch_are_clear_errors():
    with pytest.raises(ValueError, match="unknown method 'moco'"):
        build_model("moco")
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        build_backbone("vit")


@pytest.mark.parametrize("arch,dim", [("resnet34", 512), ("resnet50", 2048)])
def test_other_backbones_feature_size(arch, dim):
    net, feature_dim = build_backbone(arch)
    assert feature_dim == dim and isinstance(net.fc, nn.Identity)


def test_checkpoint_round_trip_and_backbone_export(tmp_path):
    torch.manual_seed(0)
    model = build_model("clusiam", num_clusters=6, out_dim=128)
    model.train()
    model(_images(8), _images(8, seed=3))  # move the BatchNorm running statistics
    config = {"method": "clusiam", "arch": "resnet18", "num_clusters": 6, "out_dim": 128, "lr": 0.1}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 1}, tmp_path / "ckpt.pt")

    loaded, cfg = load_checkpoint(tmp_path / "ckpt.pt")
    assert cfg == config and not loaded.training
    x = _images(3, seed=4)
    model.eval()
    torch.testing.assert_close(loaded.cluster_logits(x), model.cluster_logits(x), rtol=0, atol=0)

    path = export_backbone(tmp_path / "ckpt.pt", tmp_path / "backbone.pt")
    state = torch.load(path, weights_only=True)
    assert not any(k.startswith("fc.") for k in state)
    tv = torchvision.models.resnet18()
    result = tv.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    tv.fc = nn.Identity()
    tv.eval()
    torch.testing.assert_close(tv(x), model.features(x), rtol=0, atol=0)
    assert set(backbone_state_dict(model)) == set(state)


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    bad = tmp_path / "plain.pt"
    torch.save(torchvision.models.resnet18().state_dict(), bad)
    with pytest.raises(ValueError, match="plain.pt is not a clusiam_fast checkpoint"):
        load_checkpoint(bad)


def test_a_method_spec_needs_a_table_row_and_an_invariance_loss():
    class Dino(SelfSupervisedModel):
        method = "dino"

    class Bare(SelfSupervisedModel):
        method = "simsiam"

    with pytest.raises(ValueError, match="METHOD_TABLE has no row 'dino'"):
        MethodSpec.of(Dino)
    with pytest.raises(ValueError, match="Bare defines no invariance_loss"):
        MethodSpec.of(Bare)
