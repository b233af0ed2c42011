"""Foundation-model and ImageNet baselines in extract: timm and torchvision models with local weights, on real patches."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clusiam_fast.extract import main
from clusiam_fast.extraction.pipeline import extract
from clusiam_fast.formats.feature_bags import load_bags

REPO = Path(__file__).resolve().parents[2]


def _folder(src: Path, dst: Path, n: int, pattern: str) -> Path:
    """``n`` real patches of ``src`` linked into one bag folder ``dst/slide``."""
    (dst / "slide").mkdir(parents=True)
    for p in sorted(src.glob(pattern))[:n]:
        os.symlink(p, dst / "slide" / p.name)
    return dst


def _run(*args) -> int:
    return main([str(a) for a in args] + ["--workers", "0", "--quiet"])


def test_timm_vit_features_match_the_model(crc_dir, tmp_path, one_thread):
    timm = pytest.importorskip("timm")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    data = _folder(crc_dir / "crc-val-he-7k", tmp_path / "data", 3, "*.png")
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()  # with its 1000-class head
    weights = tmp_path / "vit.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in vit.state_dict().items()}}, weights)
    assert _run("--encoder", "timm:vit_tiny_patch16_224", "--weights", weights, data, "--out", tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "extract.json").read_text())
    assert summary["encoder"] == "timm" and summary["method"] == "timm:vit_tiny_patch16_224"
    assert summary["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert summary["normalisation_from"] == "timm data config of vit_tiny_patch16_224" and summary["mean"] == [0.5] * 3
    assert (summary["resize"], summary["crop"], summary["interpolation"]) == (248, 224, "bicubic")  # 224 / 0.9
    assert sorted(summary["dropped_keys"]) == ["head.bias", "head.weight"] and summary["checkpoint"] is None
    (bag,) = load_bags(tmp_path / "out")
    assert bag.features.shape == (3, 192) and bag.probs is None and bag.attrs["num_clusters"] == 0
    assert bag.attrs["method"] == "timm:vit_tiny_patch16_224" and bag.attrs["weights"] == str(weights.resolve())
    # timm's own evaluation transform and pre-logits features give the same numbers
    transform = create_transform(**resolve_data_config({}, model=vit))
    x = torch.stack([transform(Image.open(data / p).convert("RGB")) for p in bag.paths])
    with torch.no_grad():
        expected = vit.forward_head(vit.forward_features(x), pre_logits=True).numpy()
    np.testing.assert_allclose(bag.features, expected, rtol=1e-4, atol=1e-5)
    # the same weights as .safetensors give the same features
    from safetensors.torch import save_file

    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    extract(
        None,
        data,
        tmp_path / "st",
        encoder="timm:vit_tiny_patch16_224",
        weights=tmp_path / "vit.safetensors",
        workers=0,
        progress=False,
    )
    np.testing.assert_array_equal(load_bags(tmp_path / "st")[0].features, bag.features)


def test_torchvision_resnet50_state_dict_gives_2048_d_features(pcam_dir, tmp_path, one_thread):
    import torchvision

    data = _folder(pcam_dir / "valid" / "1", tmp_path / "data", 3, "*.jpg")
    torch.manual_seed(2)
    net = torchvision.models.resnet50().eval()
    torch.save(net.state_dict(), tmp_path / "r50.pth")  # with fc, as torchvision's own files
    assert (
        _run("--encoder", "torchvision:resnet50", "--weights", tmp_path / "r50.pth", data, "--out", tmp_path / "o") == 0
    )
    summary = json.loads((tmp_path / "o" / "extract.json").read_text())
    assert summary["feature_dim"] == 2048 and summary["normalisation_from"] == "ImageNet (torchvision:resnet50)"
    assert summary["resize"] is None and summary["crop"] is None  # CNNs take the patches as read (96 px)
    (bag,) = load_bags(tmp_path / "o")
    assert bag.features.shape == (3, 2048) and bag.attrs["method"] == "torchvision:resnet50"
    from torchvision import transforms as T

    from clusiam_fast.data.patch_folder import load_rgb

    t = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([t(load_rgb(data / p)) for p in bag.paths])
    net.fc = torch.nn.Identity()
    with torch.no_grad():
        np.testing.assert_allclose(bag.features, net(x).numpy(), rtol=1e-4, atol=1e-4)


def test_random_init_is_explicit_and_seeded(pcam_dir, tmp_path, capsys, one_thread):
    data = _folder(pcam_dir / "valid" / "0", tmp_path / "data", 2, "*.jpg")
    for out in ("a", "b"):
        assert _run("--encoder", "torchvision:resnet18", "--random-init", data, "--out", tmp_path / out) == 0
    (a,), (b,) = load_bags(tmp_path / "a"), load_bags(tmp_path / "b")
    np.testing.assert_array_equal(a.features, b.features)
    summary = json.loads((tmp_path / "a" / "extract.json").read_text())
    assert summary["random_init"] and summary["weights"] is None and a.features.shape == (2, 512)
    assert _run("--encoder", "torchvision:resnet18", data, "--out", tmp_path / "c") == 2  # neither given
    err = capsys.readouterr().err
    assert "--weights FILE" in err and "--random-init" in err


def test_bad_encoder_input_is_named(pcam_dir, tmp_path, capsys):
    import torchvision

    data = _folder(pcam_dir / "valid" / "0", tmp_path / "data", 1, "*.jpg")
    out = tmp_path / "o"
    missing = tmp_path / "nowhere" / "vit.pth"
    assert _run("--encoder", "torchvision:resnet18", "--weights", missing, data, "--out", out) == 2
    err = capsys.readouterr().err
    assert "--weights" in err and str(missing) in err
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    assert _run("--encoder", "torchvision:resnet34", "--weights", tmp_path / "r18.pth", data, "--out", out) == 2
    err = capsys.readouterr().err
    assert "r18.pth" in err and "missing keys" in err and "layer1.2.conv1.weight" in err
    assert _run("--encoder", "torchvision:resnet5O", "--random-init", data, "--out", out) == 2
    err = capsys.readouterr().err
    assert "unknown torchvision model" in err and "resnet50" in err and "list_models()" in err
    for spec, words in (("keras:resnet50", "timm:<model name>"), ("timm:hf-hub:MahmoodLab/uni", "hub")):
        assert _run("--encoder", spec, "--random-init", data, "--out", out) == 2
        assert words in capsys.readouterr().err
    assert _run(tmp_path / "r18.pth", data, "--encoder", "torchvision:resnet18", "--random-init", "--out", out) == 2
    assert "takes no CHECKPOINT" in capsys.readouterr().err
    assert _run(tmp_path / "r18.pth", data, "--weights", tmp_path / "r18.pth", "--out", out) == 2
    assert "go with --encoder" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    assert _run("--encoder", "torchvision:resnet18", "--weights", tmp_path / "junk.pth", data, "--out", out) == 2
    assert "junk.pth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _run("--encoder", "timm:vit_tiny_patch16_224", "--encoder-kwargs", "{init_values", data, "--out", out)
    assert "--encoder-kwargs" in capsys.readouterr().err
    assert not out.exists()


def test_bad_timm_input_is_named(pcam_dir, tmp_path, capsys):
    pytest.importorskip("timm")
    data, out = _folder(pcam_dir / "valid" / "0", tmp_path / "data", 1, "*.jpg"), tmp_path / "o"
    assert _run("--encoder", "timm:vit_tiny_patch16_22", "--random-init", data, "--out", out) == 2
    err = capsys.readouterr().err
    assert "unknown timm model" in err and "vit_tiny_patch16_224" in err and "timm.list_models" in err
    kwargs = ["--encoder-kwargs", '{"no_such_option": 1}']
    assert _run("--encoder", "timm:vit_tiny_patch16_224", "--random-init", *kwargs, data, "--out", out) == 2
    assert "not options of timm:vit_tiny_patch16_224" in capsys.readouterr().err
    assert not out.exists()


def test_missing_timm_gives_an_install_hint(tmp_path):
    (tmp_path / "vit.pth").write_bytes(b"")  # the weights file exists; timm is what is missing
    code = (
        "import sys; sys.modules['timm'] = None\n"  # `import timm` now raises ImportError
        "from clusiam_fast.extract import main\n"
        f"sys.exit(main(['--encoder', 'timm:vit_tiny_patch16_224', '--weights', {str(tmp_path / 'vit.pth')!r}, "
        f"{str(tmp_path)!r}, '--out', {str(tmp_path / 'o')!r}]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert 'pip install ".[encoders]"' in result.stderr and "timm" in result.stderr
