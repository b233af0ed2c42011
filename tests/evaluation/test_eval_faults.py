"""Faults a user meets with real files: deep images, bad label tables, mixed patch sizes, broken
checkpoints, missing slides, bad normalisation statistics, slow --help."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clusiam_fast.data.patch_folder import load_rgb

tifffile = pytest.importorskip("tifffile")

RAMP16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # 0, 257, ..., 65535
RAMP8 = np.arange(256, dtype=np.uint8).reshape(16, 16)


def _rgb(path) -> np.ndarray:
    img = load_rgb(path)
    assert img.mode == "RGB"
    out = np.asarray(img)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    return out


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_gray16_tiff_is_scaled_not_white(tmp_path, byteorder):
    """PIL opens these as I;16 / I;16B; convert('RGB') alone made them pure white."""
    path = tmp_path / "gray16.tif"
    tifffile.imwrite(path, RAMP16.astype(byteorder + "u2"), byteorder=byteorder)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I;16B", "I;16L")
    out = _rgb(path)
    np.testing.assert_array_equal(out[..., 0], RAMP8)  # a 16-bit ramp is an 8-bit ramp
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_gray16_png_and_mode_i(tmp_path):
    Image.fromarray(RAMP16).save(tmp_path / "gray16.png")
    np.testing.assert_array_equal(_rgb(tmp_path / "gray16.png")[..., 0], RAMP8)
    Image.fromarray(RAMP16.astype(np.int32), "I").save(tmp_path / "gray32.tif")  # PIL mode I, values 0..65535
    np.testing.assert_array_equal(_rgb(tmp_path / "gray32.tif")[..., 1], RAMP8)


def test_rgb16_tiff_read_with_tifffile(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 32768, 0
    rgb[0, 0] = (200, 700, 771)  # rounded, not truncated to the high byte (PIL's RGB;16 gives 0, 2, 3)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar16.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    for name in ("rgb16.tif", "planar16.tif"):
        out = _rgb(tmp_path / name)
        assert tuple(out[1, 1]) == (255, 128, 0) and tuple(out[0, 0]) == (1, 3, 3), name


def test_float32_tiffs(tmp_path):
    unit = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    tifffile.imwrite(tmp_path / "gray_f32.tif", unit)  # PIL mode F
    np.testing.assert_array_equal(_rgb(tmp_path / "gray_f32.tif")[..., 2], RAMP8)
    rgb = np.stack([unit, unit * 0.5, 1 - unit], -1)
    tifffile.imwrite(tmp_path / "rgb_f32.tif", rgb, photometric="rgb")  # PIL cannot open it
    out = _rgb(tmp_path / "rgb_f32.tif")
    np.testing.assert_array_equal(out[..., 0], RAMP8)
    np.testing.assert_array_equal(out[..., 2], 255 - RAMP8)
    assert out[15, 15, 1] == 128
    tifffile.imwrite(tmp_path / "f32_255.tif", RAMP8.astype(np.float32))  # 8-bit values stored as floats
    np.testing.assert_array_equal(_rgb(tmp_path / "f32_255.tif")[..., 0], RAMP8)
    tifffile.imwrite(tmp_path / "f32_wide.tif", RAMP8.astype(np.float32) * 1e6 - 5e7)  # observed range
    np.testing.assert_array_equal(_rgb(tmp_path / "f32_wide.tif")[..., 0], RAMP8)


def test_eight_bit_images_are_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(_rgb(tmp_path / "a.png"), rgb)
    np.testing.assert_array_equal(_rgb(tmp_path / "a.tif"), rgb)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(OSError, match="bad.tif"):
        load_rgb(tmp_path / "bad.tif")


# -- label tables --------------------------------------------------------------------------------


def _write(path, text: str):
    path.write_text(text)
    return path


def test_conflicting_slide_labels_are_refused_naming_slide_labels_and_file(tmp_path):
    from clusiam_fast.evaluation.labels import read_slide_labels

    csv = _write(tmp_path / "slides.csv", "slide_id,label\nA,tumour\nB,normal\nA,normal\n")
    with pytest.raises(ValueError) as info:
        read_slide_labels(csv)
    message = str(info.value)
    assert "slides.csv" in message and "slide A" in message and "'tumour' (line 2)" in message
    assert "'normal' (line 4)" in message
    split = _write(tmp_path / "split.csv", "slide_id,label,split\nA,1,train\nA,1,test\n")
    with pytest.raises(ValueError, match=r"slide A is in split 'train' \(line 2\) and 'test' \(line 3\)"):
        read_slide_labels(split)


def test_label_spellings_duplicates_and_blanks(tmp_path):
    from clusiam_fast.evaluation.labels import read_slide_labels, read_slide_table

    csv = _write(tmp_path / "slides.csv", "slide_id,label\nA,1\n B ,1.0\nC, 0 \nA,1.00\nD,\nE,  \nF,0.50\n")
    with pytest.warns(UserWarning) as record:
        table = read_slide_table(csv)
    assert table.labels == {"A": ("1", None), "B": ("1", None), "C": ("0", None), "F": ("0.5", None)}
    messages = [str(w.message) for w in record]
    assert any("2 rows with a blank label skipped as unlabelled (lines 6, 7)" in m for m in messages)
    assert any("1 rows repeat an earlier row exactly" in m and "lines 5" in m for m in messages)
    assert table.blank_rows == [6, 7] and table.duplicate_rows == [5]
    with pytest.raises(ValueError, match="blank slide_id on line"):
        read_slide_labels(_write(tmp_path / "noid.csv", "slide_id,label\n,1\n"))


def test_conflicting_patch_labels_are_refused(tmp_path):
    from clusiam_fast.evaluation.labels import read_patch_labels

    csv = _write(tmp_path / "patches.csv", "path,label\na/x.png,tumour\na/y.png,1\na/x.png,stroma\n")
    with pytest.raises(ValueError, match=r"patch a/x.png is labelled 'tumour' \(line 2\) and 'stroma' \(line 4\)"):
        read_patch_labels(csv)


# -- extraction ----------------------------------------------------------------------------------


def _resnet18_state(seed: int = 0) -> dict:
    import torch
    import torchvision

    torch.manual_seed(seed)
    net = torchvision.models.resnet18()
    return {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    import torch

    path = tmp_path_factory.mktemp("bb") / "bb.pt"
    torch.save(_resnet18_state(), path)
    return path


@pytest.fixture
def mixed_sizes(crc_dir, tmp_path):
    """Real crc tiles: three at their 224 px, two upsampled to 256 px."""
    tiles = sorted((crc_dir / "crc-val-he-7k").glob("*.png"))[:5]
    data = tmp_path / "mixed" / "slide"
    data.mkdir(parents=True)
    for i, p in enumerate(tiles):
        img = Image.open(p).convert("RGB")
        (img if i < 3 else img.resize((256, 256), Image.BILINEAR)).save(data / f"{i}_{p.name}")
    return data.parent


def test_mixed_patch_sizes_are_resized_and_said_so(mixed_sizes, backbone, tmp_path, capsys):
    import json

    import torch
    import torchvision

    from clusiam_fast.extract import main
    from clusiam_fast.extraction.normalisation import build_transform
    from clusiam_fast.formats.feature_bags import load_bags

    out = tmp_path / "out"
    args = [str(backbone), str(mixed_sizes), "--out", str(out), "--workers", "0", "--quiet", "--batch-size", "8"]
    assert main([*args, "--mean", "0.7", "0.55", "0.7", "--std", "0.15", "0.2", "0.15"]) == 0
    err = capsys.readouterr().err
    assert "stack expects" not in err and "patches come in 2 sizes" in err and "224x224: 3 patches" in err
    assert "resized to 224x224 px (the size of the first patch" in err and "--resize" in err
    summary = json.loads((out / "extract.json").read_text())
    assert summary["fit_size"] == 224 and summary["patch_sizes"]["256x256"]["count"] == 2
    assert "resized to 224x224" in summary["size_note"] and summary["num_patches"] == 5
    (bag,) = load_bags(out)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(torch.load(backbone), strict=False)
    t = build_transform([0.7, 0.55, 0.7], [0.15, 0.2, 0.15])
    x = torch.stack(
        [t(Image.open(mixed_sizes / p).convert("RGB").resize((224, 224), Image.BILINEAR)) for p in bag.paths]
    )
    with torch.no_grad():
        np.testing.assert_allclose(bag.features, net.eval()(x).numpy(), rtol=1e-4, atol=1e-4)


def test_mixed_sizes_follow_the_checkpoint_training_size(mixed_sizes, tmp_path):
    import torch

    from clusiam_fast.extraction.pipeline import extract
    from clusiam_fast.models import build_model

    torch.manual_seed(0)
    model = build_model("clusiam", "resnet18", num_clusters=4)
    ckpt = tmp_path / "checkpoint.pt"
    config = {"method": "clusiam", "arch": "resnet18", "num_clusters": 4, "crop_size": 64}
    torch.save(
        {"model": model.state_dict(), "config": config, "norm_stats": {"mean": [0.5] * 3, "std": [0.2] * 3}}, ckpt
    )
    with pytest.warns(UserWarning, match="resized to 64x64 px .the checkpoint's training crop_size"):
        summary = extract(ckpt, mixed_sizes, tmp_path / "o", workers=0, progress=False)
    assert summary["fit_size"] == 64 and summary["num_patches"] == 5
    same = extract(ckpt, mixed_sizes, tmp_path / "o2", workers=0, progress=False, resize=32, crop=32)
    assert same["fit_size"] is None and "--resize/--crop given" in same["size_note"]


def test_non_finite_weights_are_refused(backbone, tmp_path, capsys):
    import torch

    from clusiam_fast.extract import main
    from clusiam_fast.models import build_model

    state = _resnet18_state()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["bn1.running_var"][3] = float("inf")
    torch.save(state, tmp_path / "nan_backbone.pt")
    assert main([str(tmp_path / "nan_backbone.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nan_backbone.pt" in err
    floats = sum(v.is_floating_point() for v in state.values())
    assert f"2 of {floats} weight tensors hold NaN or Inf" in err and "layer2.0.conv1.weight" in err
    model = build_model("clusiam", "resnet18", num_clusters=4)
    model_state = model.state_dict()
    first = next(k for k, v in model_state.items() if v.is_floating_point())
    model_state[first].fill_(float("nan"))
    torch.save(
        {"model": model_state, "config": {"method": "clusiam", "arch": "resnet18", "num_clusters": 4}},
        tmp_path / "c.pt",
    )
    assert main([str(tmp_path / "c.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "c.pt: 1 of" in capsys.readouterr().err


@pytest.mark.parametrize(
    "mean,std,message",
    [
        (["124", "116", "104"], ["58", "57", "57"], "values > 1 suggest 0-255 pixel units"),
        (["0.5", "nan", "0.5"], ["0.2", "0.2", "0.2"], "non-finite"),
        (["0.5", "0.5", "0.5"], ["0.2", "0", "0.2"], "every std must be > 0"),
        (["-0.5", "0.5", "0.5"], ["0.2", "0.2", "0.2"], "lies in"),
    ],
)
def test_bad_mean_std_are_refused(backbone, tmp_path, capsys, mean, std, message):
    from clusiam_fast.extract import main

    assert main([str(backbone), str(tmp_path), "--out", str(tmp_path / "o"), "--mean", *mean, "--std", *std]) == 2
    err = capsys.readouterr().err
    assert message in err and "--mean/--std" in err


@pytest.mark.parametrize("flag,value", [("--resize", "-32"), ("--resize", "0"), ("--crop", "-8")])
def test_non_positive_resize_or_crop_is_refused_in_one_line(pcam_dir, backbone, tmp_path, capsys, flag, value):
    """Was: --resize -32 accepted, then every patch failed (0 silently meant no resize)."""
    from clusiam_fast.extract import main

    data = tmp_path / "patches"
    data.mkdir()
    for src in sorted((pcam_dir / "valid" / "0").glob("*.jpg"))[:2]:
        (data / src.name).symlink_to(src)
    args = [str(backbone), str(data), "--out", str(tmp_path / "o"), "--workers", "0", "--quiet", flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"clusiam-fast extract: error: {flag} must be a positive number of pixels, got {value}"]
    assert not (tmp_path / "o" / "bags").exists()


def test_a_bad_file_is_reported_once(pcam_dir, backbone, tmp_path):
    """Batched reads that fail fall back to single reads: each bad file still counts once."""
    import os

    from clusiam_fast.extraction.pipeline import extract

    data = tmp_path / "d" / "slide"
    data.mkdir(parents=True)
    for p in sorted((pcam_dir / "valid" / "0").glob("*.jpg"))[:6]:
        os.symlink(p, data / p.name)
    (data / "bad.png").write_bytes(b"not a png")
    summary = extract(
        backbone, data.parent, tmp_path / "o", workers=0, batch_size=3, progress=False, mean=[0.5] * 3, std=[0.2] * 3
    )
    failures = [f["patch"] for fs in summary["failed_patches"].values() for f in fs]
    assert failures == ["slide/bad.png"] and summary["num_failed_patches"] == 1 and summary["num_patches"] == 6


# -- missing slides ------------------------------------------------------------------------------

CMU = "CMU-1-Small-Region.svs"


def _manifest(tmp_path, wsi_dir, slide_paths: dict):
    """A tiler-format manifest.csv over real slides, by hand (slide_id -> recorded slide path)."""
    from clusiam_fast.formats.coords_h5 import write_coords_h5
    from clusiam_fast.formats.manifest import write_manifest

    root = tmp_path / "tiles"
    coords = np.array([[224 * i, 224 * j] for i in range(2, 5) for j in range(2, 4)])
    attrs = {
        "patch_size": 224,
        "patch_level": 0,
        "downsample": (1.0, 1.0),
        "level_dim": (2220, 2967),
        "downsampled_level_dim": (2220, 2967),
        "name": "x",
        "output_size": 224,
    }
    rows = []
    for slide_id, path in slide_paths.items():
        write_coords_h5(root / "patches" / f"{slide_id}.h5", coords, {**attrs, "name": slide_id})
        rows.append(
            {
                "slide_id": slide_id,
                "slide_path": str(path),
                "h5_path": f"patches/{slide_id}.h5",
                "num_patches": len(coords),
                "mpp": 0.499,
                "target_mpp": 0.5,
                "patch_size": 224,
                "read_level": 0,
                "read_size": 224,
                "backend": "openslide",
            }
        )
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


def test_a_missing_slide_is_skipped_and_named(wsi_dir, tmp_path):
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    manifest = _manifest(tmp_path, wsi_dir, {"CMU": wsi_dir / CMU, "gone": tmp_path / "nowhere" / "gone.svs"})
    with pytest.warns(
        UserWarning, match=r"1 of 2 slides are missing and are skipped: .*gone.svs of gone does not exist"
    ):
        dataset = SlidePatchDataset(manifest)
    assert [s.slide_id for s in dataset.slides] == ["CMU"] and len(dataset) == 6
    assert [m["slide_id"] for m in dataset.missing_slides] == ["gone"]
    assert dataset.missing_slides[0]["slide_path"].endswith("gone.svs") and dataset[0].size == (224, 224)
    only_gone = _manifest(tmp_path / "b", wsi_dir, {"gone": tmp_path / "nowhere" / "gone.svs"})
    with pytest.raises(FileNotFoundError, match="every slide is missing: .*gone.svs"):
        SlidePatchDataset(only_gone)


def test_extract_skips_missing_slides_and_finds_moved_ones_with_slide_dir(wsi_dir, backbone, tmp_path, capsys):
    import json

    from clusiam_fast.extract import main

    manifest = _manifest(
        tmp_path, wsi_dir, {"CMU": tmp_path / "old_place" / CMU, "gone": tmp_path / "nowhere" / "gone.svs"}
    )
    args = [str(backbone), str(manifest), "--resize", "32", "--workers", "0", "--quiet", "--mean", "0.5", "0.5", "0.5"]
    args += ["--std", "0.2", "0.2", "0.2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2  # both missing: nothing to extract
    assert "every slide is missing" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--slide-dir", str(wsi_dir)]) == 1
    err = capsys.readouterr().err
    assert "skipped missing slide gone" in err and "1 slides of the manifest are missing" in err
    summary = json.loads((tmp_path / "b" / "extract.json").read_text())
    assert summary["num_slides"] == 1 and summary["num_patches"] == 6
    assert [m["slide_id"] for m in summary["missing_slides"]] == ["gone"]
    assert "--slide-dir" in summary["missing_slides"][0]["reason"]


# -- evaluate: what the labels covered -----------------------------------------------------------


@pytest.fixture
def small_bags(tmp_path):
    """Ten bags written in the extraction format (random 8-d features)."""
    from clusiam_fast.formats.feature_bags import FeatureBag, write_bag, write_index

    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        bag = FeatureBag(f"s{i}", rng.normal(size=(4, 8)).astype(np.float32), attrs={"method": "backbone"})
        write_bag(tmp_path / "feats" / "bags" / f"s{i}.h5", bag)
        rows.append({"slide_id": bag.slide_id, "bag_path": f"bags/s{i}.h5", "num_patches": 4, "num_failed": 0})
    write_index(tmp_path / "feats", rows)
    return tmp_path / "feats"


def test_evaluate_says_what_the_labels_covered_and_why_mil_did_not_run(small_bags, tmp_path, capsys):
    from clusiam_fast.evaluate import main

    labels = _write(tmp_path / "slides.csv", "slide_id,label\ns0,tumour\ns1, tumour\ns2,tumour\nx9,normal\nx8,normal\n")
    assert main([str(small_bags), "--labels", str(labels), "--out", str(tmp_path / "r"), "--no-maps", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "3 bags labelled, classes tumour (3)" in out
    assert "7 bags have no label (e.g. s3, s4, s5, s6, s7); 2 labels have no bag (e.g. x8, x9)" in out
    assert "MIL did not run: the 3 labelled bags all have class 'tumour'" in out
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Slide labels" in md and "2 labels have no bag" in md and "MIL did not run" in md
    none = _write(tmp_path / "none.csv", "slide_id,label\nx1,a\nx2,b\n")
    assert main([str(small_bags), "--labels", str(none), "--out", str(tmp_path / "r2"), "--no-maps", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 bags labelled" in out and "MIL did not run: no bag's slide_id appears in" in out and "'s0'" in out


def test_evaluate_names_the_classes(small_bags, tmp_path, capsys):
    from clusiam_fast.evaluate import main

    labels = _write(
        tmp_path / "slides.csv",
        "slide_id,label,split\n"
        + "".join(f"s{i},{label},train\n" for i, label in enumerate(["1", "1.0", " 1", "1.00", "0", " 0 ", "0.0", "0"]))
        + "s8,1,test\ns9,0,test\ns0,1,train\n",
    )
    mil = [
        "--epochs",
        "1",
        "--warmup-epochs",
        "0",
        "--lrs",
        "1e-3",
        "--wds",
        "1e-4",
        "--seeds",
        "0",
        "--models",
        "maxpool",
    ]
    mil += ["--val-fraction", "0.5"]
    with pytest.warns(UserWarning, match="repeat an earlier row"):
        rc = main(
            [str(small_bags), "--labels", str(labels), "--out", str(tmp_path / "r"), "--no-maps", "--quiet", *mil]
        )
    out = capsys.readouterr().out
    assert rc == 0 and "MIL did not run" not in out
    assert "classes 0 (5), 1 (5)" in out and "MIL classes: 0: 0, 1: 1" in out
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Classes (model output index: name): 0: 0, 1: 1." in md and "1 rows repeating an earlier row" in md


def _labelled_bags(folder, classes: list[str], *, empty=(), nan=()):
    """One 4-patch bag per entry of ``classes`` (s0, s1, ...), slides.csv beside them; bags in ``empty``
    have no patch, bags in ``nan`` one NaN feature."""
    from clusiam_fast.formats.feature_bags import FeatureBag, write_bag, write_index

    rng = np.random.default_rng(1)
    rows = []
    for i, label in enumerate(classes):
        x = rng.normal(size=(0 if i in empty else 4, 8)).astype(np.float32) + (label == "tumour")
        if i in nan:
            x[2, 5] = np.nan
        write_bag(folder / "bags" / f"s{i}.h5", FeatureBag(f"s{i}", x, attrs={"method": "backbone"}))
        rows.append({"slide_id": f"s{i}", "bag_path": f"bags/s{i}.h5", "num_patches": len(x), "num_failed": 0})
    write_index(folder, rows)
    labels = _write(
        folder.parent / "slides.csv", "slide_id,label\n" + "".join(f"s{i},{c}\n" for i, c in enumerate(classes))
    )
    return folder, labels


TINY_MIL = ["--epochs", "1", "--warmup-epochs", "0", "--lrs", "1e-3", "--wds", "1e-4", "--seeds", "0"]
TINY_MIL += ["--models", "maxpool", "--bootstrap", "0", "--no-maps", "--quiet"]


def test_a_pilot_is_told_by_class_name_what_its_labels_allow(tmp_path, capsys):
    """1 normal + 2 tumour slides: no split, no --folds; said with names, the validation split and what to change."""
    from clusiam_fast.evaluate import main

    feats, labels = _labelled_bags(tmp_path / "feats", ["normal", "tumour", "tumour"])
    args = [str(feats), "--labels", str(labels), "--out", str(tmp_path / "r"), *TINY_MIL]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "class index" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "class 'normal' has 1" in err and "Slides per class: normal 1, tumour 2" in err
    assert "at least 3 slides per class: 1 to test and 2 to train on" in err
    assert "validation split (--val-fraction) from the training slides" in err
    assert "allow no train/test split and no --folds" in err
    assert "label at least 2 more slides of class 'normal' and 1 more slide of class 'tumour'" in err
    assert not (tmp_path / "r" / "report.json").exists()  # said up front, before anything ran
    assert main([*args, "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "or fewer" not in err and "--folds 2 puts slides of every class in each test fold" in err
    assert "class 'normal' has 1" in err and "--folds 2 needs at least 4 slides per class" in err


def test_the_largest_folds_the_labels_allow_runs_and_one_more_is_refused(tmp_path, capsys):
    import json

    from clusiam_fast.evaluate import main

    feats, labels = _labelled_bags(tmp_path / "feats", ["normal"] * 4 + ["tumour"] * 8)
    args = [str(feats), "--labels", str(labels), "--out", str(tmp_path / "r"), *TINY_MIL]
    assert main([*args, "--folds", "5"]) == 2
    err = capsys.readouterr().err
    assert "--folds 5" in err and "class 'normal' has 4" in err and "Slides per class: normal 4, tumour 8" in err
    assert "allow one train/test split and --folds 2 to 4" in err and "use --folds 4" in err
    assert main([*args, "--folds", "4"]) == 0
    assert len(json.loads((tmp_path / "r" / "report.json").read_text())["mil"]["folds"]) == 4
    # The validation split binds: 3 + 3 slides leave 4 training slides of a fold, and 25 % of 4 is one slide.
    feats, labels = _labelled_bags(tmp_path / "six", ["normal"] * 3 + ["tumour"] * 3)
    args = [str(feats), "--labels", str(labels), "--out", str(tmp_path / "r6"), *TINY_MIL]
    assert main([*args, "--folds", "3"]) == 2
    err = capsys.readouterr().err
    assert "validation split (--val-fraction 0.25) that model selection takes from the 4 training slides" in err
    assert "holds out 1 of 4 slides" in err and "(raise --val-fraction)" in err
    assert main([*args, "--folds", "3", "--val-fraction", "0.5"]) == 0
    assert main([*args, "--folds", "2", "--val-fraction", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "class 'normal' has 1" in err and "--folds 3" in err and "use --folds 3" in err


def test_empty_and_nan_bags_are_left_out_by_name_and_counted(tmp_path, capsys):
    import json

    from clusiam_fast.evaluate import main

    classes = ["normal", "tumour"] * 5
    feats, labels = _labelled_bags(tmp_path / "feats", classes, empty=(3,), nan=(4,))
    out = tmp_path / "r"
    assert main([str(feats), "--labels", str(labels), "--out", str(out), "--val-fraction", "0.5", *TINY_MIL]) == 0
    err = capsys.readouterr().err
    assert f"left out bag s3 ({feats / 'bags' / 's3.h5'}): no patches" in err
    assert f"left out bag s4 ({feats / 'bags' / 's4.h5'}): 1 of 4 patches have NaN or Inf features" in err
    report = json.loads((out / "report.json").read_text())
    assert report["left_out_bags"]["count"] == 2 and report["inputs"]["num_slides"] == 8
    assert [b["slide_id"] for b in report["left_out_bags"]["bags"]] == ["s3", "s4"]
    assert report["slide_labels"]["labels_without_bag"] == ["s3", "s4"] and "mil" in report
    assert "## Left-out bags (2)" in (out / "report.md").read_text()
    # Too few remain: the failure names the classes and the left-out bags.
    feats, labels = _labelled_bags(tmp_path / "few", ["normal"] * 3 + ["tumour"] * 3, empty=(0,), nan=(1,))
    assert main([str(feats), "--labels", str(labels), "--out", str(tmp_path / "r2"), *TINY_MIL]) == 2
    err = capsys.readouterr().err
    assert "class 'normal' has 1" in err and "2 bag(s) were left out before: s0 (no patches), s1 (1 of 4" in err
    feats, _ = _labelled_bags(tmp_path / "none", ["normal"], nan=(0,))
    assert main([str(feats), "--out", str(tmp_path / "r3"), "--quiet"]) == 2
    assert "no feature bag can be evaluated" in capsys.readouterr().err


# -- --help is instant ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["clusiam_fast.extract", "clusiam_fast.evaluate"])
def test_help_answers_without_importing_torch(module):
    import subprocess
    import sys
    import time

    code = (
        "import runpy, sys\n"
        f"sys.argv = [{module!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "usage: clusiam-fast " + module.split(".")[-1] in done.stdout and done.stdout.strip().endswith("NO-TORCH"), (
        done.stdout[-300:]
    )
    assert seconds < 5, f"--help took {seconds:.1f} s"  # ~0.1 s without torch; the torch check above is the guard


def test_an_unreadable_slide_is_one_failure_with_its_reason(wsi_dir, backbone, tmp_path):
    from clusiam_fast.data.slide_dataset import SlidePatchDataset
    from clusiam_fast.extraction.pipeline import extract

    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00 this is not a slide")
    manifest = _manifest(tmp_path, wsi_dir, {"CMU": wsi_dir / CMU, "broken": broken})
    dataset = SlidePatchDataset(manifest)
    with pytest.raises(OSError, match="cannot open slide .*broken.svs") as first:
        dataset[len(dataset) - 1]
    with pytest.raises(OSError) as again:  # not reopened for every patch: the same error at once
        dataset[len(dataset) - 2]
    assert str(again.value) == str(first.value)
    summary = extract(
        backbone, manifest, tmp_path / "o", resize=32, workers=0, progress=False, mean=[0.5] * 3, std=[0.2] * 3
    )
    (failed,) = summary["failed_slides"]
    assert failed["slide_id"] == "broken" and failed["reason"].startswith("all 6 patches failed: OSError: cannot open")
    assert summary["num_slides"] == 1
