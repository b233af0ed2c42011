"""``python -m clusiam_fast.evaluate`` end to end on real patches and the real CMU slide."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clusiam_fast.evaluate import main as evaluate_main
from clusiam_fast.evaluation.cluster_map import grid_step, paint_clusters, save_cluster_map
from clusiam_fast.extract import main as extract_main

KATHER = {0: "tumour", 1: "stroma", 2: "complex", 3: "lympho", 4: "debris", 5: "mucosa", 6: "adipose", 7: "empty"}
CRC7K = {
    "TUM": "tumour",
    "STR": "stroma",
    "LYM": "lympho",
    "DEB": "debris",
    "NORM": "mucosa",
    "ADI": "adipose",
    "MUC": "mucus",
    "MUS": "muscle",
}
SMALL_MIL = [
    "--epochs",
    "4",
    "--warmup-epochs",
    "1",
    "--lrs",
    "1e-2",
    "--wds",
    "1e-4",
    "--seeds",
    "0",
    "1",
    "--batch-size",
    "8",
    "--quiet",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A freshly built CluSiam (resnet18, K = 8) saved in the trainer's checkpoint format."""
    from clusiam_fast.models import build_model

    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.manual_seed(0)
    model = build_model("clusiam", "resnet18", num_clusters=8)
    torch.save(
        {
            "model": model.state_dict(),
            "config": {"method": "clusiam", "arch": "resnet18", "num_clusters": 8},
            "epoch": 0,
            "norm_stats": {"mean": [0.70, 0.55, 0.70], "std": [0.15, 0.20, 0.15]},
        },
        path,
    )
    return path


def test_patch_labels_give_clustering_and_knn(checkpoint, crc_dir, tmp_path):
    feats = tmp_path / "feats"
    assert (
        extract_main(
            [str(checkpoint), str(crc_dir), "--out", str(feats), "--resize", "32", "--workers", "0", "--quiet"]
        )
        == 0
    )
    rows = []
    for p in sorted(crc_dir.rglob("*.png")):
        m = re.search(r"_label_(\d)", p.name)
        label = KATHER[int(m.group(1))] if m else CRC7K[p.name.split("-")[0]]
        rows.append(
            {
                "path": p.relative_to(crc_dir).as_posix(),
                "label": label,
                "split": "train" if p.parent.name == "kather2016" else "test",
            }
        )
    with open(tmp_path / "patches.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        w.writeheader(), w.writerows(rows)
    report = tmp_path / "report"
    assert (
        evaluate_main([str(feats), "--patch-labels", str(tmp_path / "patches.csv"), "--out", str(report), "--quiet"])
        == 0
    )
    res = json.loads((report / "report.json").read_text())
    methods = [r["method"] for r in res["clustering"]]
    assert methods[:2] == ["assigner (argmax)", "K-means (same K)"]
    assigner, same_k = res["clustering"][:2]
    assert assigner["k"] == 8 and same_k["k"] == assigner["clusters_used"] == same_k["clusters_used"]
    assert all(0 <= r["rand_index"] <= 1 and -1 <= r["adjusted_rand_index"] <= 1 for r in res["clustering"])
    assert res["patch_labels"]["labelled_patches"] == len(rows)
    knn = res["knn"]
    assert knn["n_train"] == 100 and knn["n_test"] == 32 and 0 <= knn["f1_macro"] <= 1
    assert res["cluster_sizes"]["clusters_used"] == assigner["clusters_used"]
    assert sum(res["cluster_sizes"]["sizes"].values()) == len(rows)
    md = (report / "report.md").read_text()
    for column in ("Rand index", "Adjusted Rand index", "Clusters used", "macro F1", "sklearn.cluster.KMeans"):
        assert column in md
    assert (report / "cluster_sizes.png").stat().st_size > 1000
    assert "mil" in res["skipped"] and "cluster_maps" in res["skipped"]


@pytest.fixture(scope="module")
def pcam_slides(pcam_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """60 'slides' (folders) of 6-8 real PCam patches; a slide is tumour when it holds any tumour patch."""
    root = tmp_path_factory.mktemp("pcam_slides")
    normal = sorted((pcam_dir / "valid" / "0").glob("*.jpg"))
    tumour = sorted((pcam_dir / "valid" / "1").glob("*.jpg"))
    rng = np.random.default_rng(0)
    rows, n_used, t_used = [], 0, 0
    for i in range(60):
        size, keys = int(rng.integers(6, 9)), (int(rng.integers(2, 5)) if i % 2 else 0)
        folder = root / f"slide{i:02d}"
        folder.mkdir()
        for p in normal[n_used : n_used + size - keys] + tumour[t_used : t_used + keys]:
            os.symlink(p, folder / p.name)
        n_used, t_used = n_used + size - keys, t_used + keys
        rows.append(
            {"slide_id": folder.name, "label": "tumour" if keys else "normal", "split": "test" if i >= 44 else "train"}
        )
    return root, rows


def test_slide_labels_give_mil_tables_rocs_and_json(checkpoint, pcam_slides, tmp_path):
    data, rows = pcam_slides
    feats = tmp_path / "feats"
    assert (
        extract_main(
            [str(checkpoint), str(data), "--out", str(feats), "--crop", "32", "--workers", "0", "--fp16", "--quiet"]
        )
        == 0
    )
    with open(tmp_path / "slides.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "label", "split"])
        w.writeheader(), w.writerows(rows)
    report = tmp_path / "report"
    assert (
        evaluate_main(
            [str(feats), "--labels", str(tmp_path / "slides.csv"), "--out", str(report), "--no-maps", *SMALL_MIL]
        )
        == 0
    )
    res = json.loads((report / "report.json").read_text())
    mil = res["mil"]
    assert mil["classes"] == ["normal", "tumour"] and mil["train_slides"] == 44 and mil["test_slides"] == 16
    assert sorted(mil["test_slide_ids"]) == [r["slide_id"] for r in rows if r["split"] == "test"]
    for name in ("maxpool", "dsmil", "abmil"):  # the default heads
        ci = mil["models"][name]["summary"]["auc_ci"]
        assert ci["unit"] == "slide" and ci["n_units"] == 16 and ci["low"] <= ci["auc"] <= ci["high"]
        runs = mil["models"][name]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:  # validation slides come from the training slides only
            assert set(r["val_slides"]) <= {x["slide_id"] for x in rows if x["split"] == "train"}
        accs = [r["test"]["metrics"]["accuracy"] for r in runs]
        assert mil["models"][name]["summary"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert (report / f"roc_{name}.png").stat().st_size > 1000
    for name in ("abmil", "dsmil"):  # every test slide's attention, one row per seed
        files = mil["attention"][name]["files"]
        assert sorted(files) == sorted(mil["test_slide_ids"]) and np.load(report / files["slide44"]).shape[0] == 2
    assert "maxpool" not in mil["attention"] and mil["attention_maps"] == []  # no coordinates: no heatmaps
    md = (report / "report.md").read_text()
    assert "| Model | Accuracy | AUC (normal) | AUC (tumour) | macro AUC | macro AUC [95% CI] |" in md and "±" in md
    assert re.search(r"\| abmil \| .* \| \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] \|", md)
    # Without a split column a stratified seeded test split is made once, and said so.
    with open(tmp_path / "nosplit.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["slide_id", "label"])
        w.writeheader(), w.writerows({"slide_id": r["slide_id"], "label": r["label"]} for r in rows)
    assert (
        evaluate_main(
            [
                str(feats),
                "--labels",
                str(tmp_path / "nosplit.csv"),
                "--out",
                str(tmp_path / "r2"),
                "--no-maps",
                "--models",
                "maxpool",
                *SMALL_MIL,
            ]
        )
        == 0
    )
    mil2 = json.loads((tmp_path / "r2" / "report.json").read_text())["mil"]
    assert "stratified seeded" in mil2["split"] and mil2["test_slides"] == 15
    assert mil2["class_counts_test"] == {"normal": 8, "tumour": 7} or mil2["class_counts_test"] == {
        "normal": 7,
        "tumour": 8,
    }


def test_label_files_with_errors_are_named(checkpoint, pcam_slides, tmp_path, capsys):
    data, _ = pcam_slides
    feats = tmp_path / "feats"
    assert (
        extract_main(
            [str(checkpoint), str(data / "slide00"), "--out", str(feats), "--crop", "32", "--workers", "0", "--quiet"]
        )
        == 0
    )
    (tmp_path / "bad.csv").write_text("slide,diagnosis\nslide00,normal\n")
    assert (
        evaluate_main([str(feats), "--labels", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    )
    assert "bad.csv" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "nothing" in capsys.readouterr().err


def test_paint_clusters_geometry():
    coords = np.array([[0, 0], [224, 0], [0, 224], [448, 448]])
    assert grid_step(coords, 999) == 224 and grid_step(coords[:1], 300) == 300
    canvas = paint_clusters((70, 70), coords, np.array([3, 5, 7, 9]), scale=0.1, footprint=224)
    assert canvas[10, 10] == 3 and canvas[10, 30] == 5 and canvas[30, 10] == 7 and canvas[55, 55] == 9
    assert (canvas[10, :45] >= 0).all() and (canvas[:45, 10] >= 0).all()  # neighbours touch: no gaps
    assert (
        canvas[30, 30] == -1 and (canvas[:, 68:] == -1).all() and (canvas[68:, :] == -1).all()
    )  # nothing painted elsewhere
    assert set(np.unique(canvas)) == {-1, 3, 5, 7, 9}


def test_cluster_map_of_the_cmu_slide_from_tiler_output(checkpoint, wsi_dir, tmp_path):
    pytest.importorskip("clusiam_fast.tile", reason="the slide tiler is not installed")
    from PIL import Image

    from clusiam_fast.tile import main as tile_main

    slide = wsi_dir / "CMU-1-Small-Region.svs"
    assert tile_main([str(slide), "--out", str(tmp_path / "tiles")]) == 0
    feats = tmp_path / "feats"
    assert (
        extract_main(
            [
                str(checkpoint),
                str(tmp_path / "tiles" / "manifest.csv"),
                "--out",
                str(feats),
                "--resize",
                "32",
                "--workers",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    (bag,) = __import__("clusiam_fast.formats.feature_bags", fromlist=["load_bags"]).load_bags(feats)
    assert bag.coords is not None and len(bag.coords) == len(bag.features) > 10
    assert bag.attrs["slide_path"] == str(slide) and bag.attrs["mpp"] == pytest.approx(0.499, abs=1e-3)
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = np.zeros((300, 222), np.uint8)
    mask[60:200, 50:170] = 255
    Image.fromarray(mask).save(masks / "CMU-1-Small-Region.png")
    report = tmp_path / "report"
    assert (
        evaluate_main([str(feats), "--out", str(report), "--annotations", str(masks), "--map-size", "512", "--quiet"])
        == 0
    )
    res = json.loads((report / "report.json").read_text())
    (entry,) = res["cluster_maps"]["maps"]
    assert entry["slide_id"] == "CMU-1-Small-Region" and entry["thumbnail"].startswith("slide") and entry["annotation"]
    assert entry["patches"] == len(bag.coords) and entry["footprint_level0_px"] == 224
    png = np.asarray(Image.open(report / entry["png"]).convert("RGB")).astype(int)
    plain = tmp_path / "plain.png"
    save_cluster_map(plain, bag.coords, bag.clusters, bag.attrs, max_size=512)
    assert np.asarray(Image.open(plain).convert("RGB")).shape == png.shape
    assert np.abs(np.asarray(Image.open(plain).convert("RGB")).astype(int) - png).sum() > 0  # the contour was drawn
    assert "![CMU-1-Small-Region](maps/CMU-1-Small-Region.png)" in (report / "report.md").read_text()
