"""Clusters against the centre (PathoROB's clustering score) on real PCam patches and CRC tiles.

A synthetic centre column is made to be the class, to be independent of it, and to follow the
features: the clustering score must move from 0 to about ARI(label) to below 0 (flagged).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clusiam_fast.evaluation.pipeline import EvalConfig, run_evaluation
from clusiam_fast.extraction.pipeline import extract


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def pcam_feats(pcam_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    """80 PCam patches (40 per class) embedded by a seeded random ResNet-18 backbone (no assigner: K-means, K = 2)."""
    import torchvision

    root = tmp_path_factory.mktemp("confounders")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    ckpt = root / "backbone.pt"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, ckpt)
    rows = []
    for label in ("0", "1"):
        for k, src in enumerate(sorted((pcam_dir / "valid" / label).glob("*.jpg"))[:40]):
            (root / "patches").mkdir(exist_ok=True)
            (root / "patches" / f"{label}_{src.name}").symlink_to(src)
            rows.append({"path": f"{label}_{src.name}", "label": label, "split": "test" if k % 2 else "train"})
    norm = dict(mean=(0.7, 0.55, 0.7), std=(0.15, 0.2, 0.15))
    extract(ckpt, root / "patches", root / "feats", resize=32, workers=0, progress=False, **norm)
    return root / "feats", rows


def _evaluate(feats: Path, rows: list[dict], centres: list[str], out: Path) -> dict:
    labels = _write_csv(out.parent / f"{out.name}.csv", [{**r, "center": c} for r, c in zip(rows, centres)])
    return run_evaluation(feats, out, patch_labels=labels, cfg=EvalConfig(maps=False, progress=False))


def test_the_clustering_score_moves_with_the_centre(pcam_feats, tmp_path):
    feats, rows = pcam_feats
    as_class = _evaluate(feats, rows, [f"hospital_{r['label']}" for r in rows], tmp_path / "as_class")["confounders"]
    rng = np.random.default_rng(0)
    independent = [f"h{int(rng.integers(0, 2))}" for _ in rows]
    free = _evaluate(feats, rows, independent, tmp_path / "free")["confounders"]
    res = json.loads((tmp_path / "free" / "report.json").read_text())
    assert res["confounders"]["centres"] == {"h0": independent.count("h0"), "h1": independent.count("h1")}
    # a centre that the features see (as a stain or a scanner would be): two K-means groups of the features
    from clusiam_fast.evaluation.clustering import kmeans
    from clusiam_fast.formats.feature_bags import load_bags

    (bag,) = load_bags(feats)
    groups = dict(zip(bag.paths, kmeans(bag.features, 2, seed=1)[0]))
    stained = _evaluate(feats, rows, [f"scanner_{groups[r['path']]}" for r in rows], tmp_path / "stained")
    stained = stained["confounders"]

    for got in (as_class, free, stained):
        assert [r["method"] for r in got["rows"]] == ["K-means (K = classes)"]
        assert got["patches"] == 80 and 0 <= got["knn_other_centre"]["accuracy"] <= 1
    (a,), (f,), (s,) = as_class["rows"], free["rows"], stained["rows"]
    assert a["ari_label"] == f["ari_label"] == s["ari_label"]  # same clusters, same labels
    assert a["ari_centre"] == pytest.approx(a["ari_label"]) and a["clustering_score"] == pytest.approx(0)
    assert not a["follows_centre"] and not f["follows_centre"]
    assert f["clustering_score"] == pytest.approx(f["ari_label"] - f["ari_centre"])
    assert abs(f["ari_centre"]) < 0.05  # a centre drawn at random says nothing about the clusters
    assert s["ari_centre"] > 0.5 and s["clustering_score"] < f["clustering_score"] - 0.5 and s["follows_centre"]
    assert stained["follows_centre"] == ["K-means (K = classes)"]
    # the study's column and flag, read from the report
    from clusiam_fast.study.field import field_lines, field_result

    row = {"name": "m", **field_result(json.loads((tmp_path / "stained" / "report.json").read_text()))}
    assert row["clustering_score"]["kmeans"]["clustering_score"] == pytest.approx(s["clustering_score"])
    assert "Clusters that follow the centre more than the class: m (kmeans)" in "\n".join(
        field_lines({"methods": [row]})
    )
    md = (tmp_path / "stained" / "report.md").read_text()
    assert "Clusters follow the centre more than the class: K-means (K = classes)" in md and "clustering score" in md


def test_centres_of_crc_sources_and_the_cross_centre_knn(crc_random_bags, tmp_path):
    """The two CRC sources (Kather 2016, CRC-VAL-HE-7K) as two centres, given in slides.csv by folder."""
    from clusiam_fast.evaluation.confounders import confounder_analysis, patch_centres
    from clusiam_fast.evaluation.labels import join_patch_labels

    rows = []
    for bag in crc_random_bags:
        for k, p in enumerate(bag.paths):
            label = p.split("_label_")[1][0] if "_label_" in p else "x" + p.split("/")[-1].split("-")[0]
            rows.append({"path": p, "label": label, "split": "test" if k % 2 else "train"})
    table = join_patch_labels(crc_random_bags, _write_csv(tmp_path / "patches.csv", rows))
    slides = [{"slide_id": b.slide_id, "label": "any", "site": b.slide_id.split("/")[-1]} for b in crc_random_bags]
    centres, source = patch_centres(table, tmp_path / "patches.csv", _write_csv(tmp_path / "slides.csv", slides))
    assert source.startswith("site column of") and sorted(set(centres)) == ["crc-val-he-7k", "kather2016"]
    got = confounder_analysis(table, centres, source, num_clusters=None)
    assert got["centres"] == {"crc-val-he-7k": 32, "kather2016": 100}
    (kmeans_row,) = got["rows"]
    assert kmeans_row["method"] == "K-means (K = classes)" and -1 <= kmeans_row["clustering_score"] <= 2
    # the classes differ between the sources, so a neighbour from the other source has another label
    assert got["knn_other_centre"]["accuracy"] == 0.0 and got["knn_other_centre"]["n_test"] == 66


def test_cluster_maps_coloured_by_centre_on_the_cmu_slide(wsi_dir, tmp_path):
    """Eight copies of the CMU slide, four 'from' each of two hospitals: identical pixels, so every
    cluster draws exactly half of its patches from each centre, and the maps say so."""
    pytest.importorskip("clusiam_fast.tile", reason="the slide tiler is not installed")
    import torchvision
    from cohort_slides import make_cohort

    from clusiam_fast.evaluate import main as evaluate_main
    from clusiam_fast.tile import main as tile_main

    slides = make_cohort(wsi_dir, tmp_path / "slides", good=8)
    assert tile_main([*map(str, slides), "--out", str(tmp_path / "tiles"), "--workers", "1"]) == 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, tmp_path / "b.pt")
    norm = dict(mean=(0.7, 0.55, 0.7), std=(0.15, 0.2, 0.15))
    extract(tmp_path / "b.pt", tmp_path / "tiles", tmp_path / "f", resize=32, workers=0, progress=False, **norm)
    rows = [
        {
            "slide_id": f"slide_{k:02d}",
            "label": "ab"[k % 2],
            "split": "test" if k % 4 >= 2 else "train",
            "site": "AB"[k // 4],
        }
        for k in range(8)
    ]
    labels = _write_csv(tmp_path / "slides.csv", rows)
    mil = ["--models", "maxpool", "--epochs", "1", "--warmup-epochs", "0", "--seeds", "0", "--no-probe", "--quiet"]
    out = tmp_path / "r"
    argv = [
        str(tmp_path / "f"),
        "--labels",
        str(labels),
        "--out",
        str(out),
        "--map-colour",
        "centre",
        "--map-size",
        "256",
    ]
    assert evaluate_main([*argv, *mil, "--lrs", "1e-3", "--wds", "1e-4", "--val-fraction", "0.34"]) == 0
    res = json.loads((out / "report.json").read_text())
    assert "coloured by its majority centre (site column of" in res["cluster_maps"]["clusters_from"]
    assert res["centre_of_clusters"]["centres"] == {"0": "A", "1": "B", "2": "no centre"}
    shares = res["centre_of_clusters"]["majority_share"]
    assert len(shares) == 8 and set(shares.values()) == {0.5}
    assert len(res["cluster_maps"]["maps"]) == 8 and all(
        (out / m["png"]).stat().st_size > 1000 for m in res["cluster_maps"]["maps"]
    )
