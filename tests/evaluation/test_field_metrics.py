"""The field's metrics (eva, Patho-Bench) and the linear probe, on real CRC tiles and PCam patches.

Every number is checked against scikit-learn computed here, and the probe's choice of C
against the rule "validation only": the test labels cannot change it.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, roc_auc_score

from clusiam_fast.evaluation.bootstrap import replicate_weights
from clusiam_fast.evaluation.field_metrics import summarise_task, task_metrics, weighted_balanced_accuracy
from clusiam_fast.evaluation.probe import linear_probe, slide_probe


@pytest.fixture(scope="module")
def crc_patches(crc_random_bags) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 100 Kather 2016 tiles (8 classes) of the random-ResNet CRC bags: features, labels, split."""
    (bag,) = [b for b in crc_random_bags if b.slide_id.endswith("kather2016")]
    labels = np.asarray([int(p.split("_label_")[1][0]) for p in bag.paths])
    split = np.asarray(["test" if k % 3 == 0 else "train" for k in range(len(labels))])
    return np.asarray(bag.features), labels, split


def test_task_metrics_are_sklearns(crc_patches):
    feats, y, _ = crc_patches
    rng = np.random.default_rng(0)
    logits = feats[:, :8] * 5 + rng.normal(size=(len(y), 8))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = task_metrics(y, probs, ordinal=True)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert got["auc_ovr_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert got["auc_ovo_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovo", average="macro"))
    assert got["qwk"] == pytest.approx(cohen_kappa_score(y, probs.argmax(1), weights="quadratic"))
    assert "qwk" not in task_metrics(y, probs)
    # a resample's weights give the balanced accuracy of the resampled set
    w = replicate_weights(y, None, 3, seed=1)
    for row in w:
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        expected = balanced_accuracy_score(y[idx], probs.argmax(1)[idx])
        assert weighted_balanced_accuracy(y, probs.argmax(1), row[None])[0] == pytest.approx(expected)
    other = np.roll(probs, 1, axis=1)
    summary = summarise_task(y, [probs, other], [str(c) for c in range(8)])
    low, high = summary["balanced_accuracy_ci"]
    assert low <= summary["balanced_accuracy"]["mean"] <= high and summary["seeds"] == 2
    assert set(summary["auc_ci_per_class"]) == {str(c) for c in range(8)}
    assert all(v[1] <= v[0] <= v[2] for v in summary["auc_ci_per_class"].values())


def test_the_probe_chooses_c_on_validation_only(crc_patches):
    feats, y, split = crc_patches
    tr, te = split == "train", split == "test"
    classes = [str(c) for c in range(8)]
    res = linear_probe(feats[tr], y[tr], feats[te], y[te], classes, seeds=(0, 1), n_boot=200)
    shuffled = linear_probe(
        feats[tr], y[tr], feats[te], np.random.default_rng(0).permutation(y[te]), classes, seeds=(0, 1), n_boot=200
    )
    assert [r["C"] for r in res["runs"]] == [r["C"] for r in shuffled["runs"]]  # test labels play no part
    for run in res["runs"]:
        best = max(run["sweep"], key=lambda s: (s["val_balanced_accuracy"], s["val_auc"], -s["C"]))
        assert run["C"] == best["C"] and len(run["sweep"]) == 6
        probs = np.asarray(run["test"]["probs"])
        assert run["test"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[te], probs.argmax(1)))
    s = res["summary"]
    assert res["n_test"] == te.sum() and s["seeds"] == 2
    assert s["balanced_accuracy_ci"][0] <= s["balanced_accuracy"]["mean"] <= s["balanced_accuracy_ci"][1]
    assert s["balanced_accuracy"]["mean"] > 1 / 8  # a random ResNet's features separate the tissues a little


def _pcam_slides(pcam_dir: Path, root: Path, n: int = 24) -> list[dict]:
    normal = sorted((pcam_dir / "valid" / "0").glob("*.jpg"))
    tumour = sorted((pcam_dir / "valid" / "1").glob("*.jpg"))
    rows, used = [], {"n": 0, "t": 0}
    for i in range(n):
        keys = 2 if i % 2 else 0
        folder = root / f"slide{i:02d}"
        folder.mkdir(parents=True)
        for p in normal[used["n"] : used["n"] + 5 - keys] + tumour[used["t"] : used["t"] + keys]:
            os.symlink(p, folder / p.name)
        used["n"], used["t"] = used["n"] + 5 - keys, used["t"] + keys
        rows.append({"slide_id": folder.name, "label": str(i % 2), "split": "test" if i % 4 >= 2 else "train"})
    return rows


def test_evaluate_reports_balanced_accuracy_probes_and_qwk(pcam_dir, tmp_path):
    import torch
    import torchvision

    from clusiam_fast.evaluate import main as evaluate_main
    from clusiam_fast.extract import main as extract_main

    rows = _pcam_slides(pcam_dir, tmp_path / "slides")
    with open(tmp_path / "slides.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "label", "split"])
        writer.writeheader(), writer.writerows(rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, tmp_path / "backbone.pt")
    flags = [
        "--resize",
        "32",
        "--workers",
        "0",
        "--quiet",
        "--mean",
        "0.7",
        "0.55",
        "0.7",
        "--std",
        "0.15",
        "0.2",
        "0.15",
    ]
    assert (
        extract_main([str(tmp_path / "backbone.pt"), str(tmp_path / "slides"), "--out", str(tmp_path / "f"), *flags])
        == 0
    )
    mil = ["--models", "maxpool", "--epochs", "2", "--warmup-epochs", "0", "--lrs", "1e-3", "--wds", "1e-4"]
    argv = [str(tmp_path / "f"), "--labels", str(tmp_path / "slides.csv"), "--out", str(tmp_path / "r"), *mil]
    assert evaluate_main([*argv, "--ordinal", "--no-maps", "--quiet", "--bootstrap", "200"]) == 0
    res = json.loads((tmp_path / "r" / "report.json").read_text())
    field = res["mil"]["models"]["maxpool"]["field"]
    assert field["seeds"] == 5 and len(res["mil"]["models"]["maxpool"]["runs"]) == 5  # eva's 5 runs by default
    for run in res["mil"]["models"]["maxpool"]["runs"]:
        t = run["test"]
        got = balanced_accuracy_score(t["labels"], np.asarray(t["probs"]).argmax(1))
        assert got == pytest.approx(task_metrics(t["labels"], np.asarray(t["probs"]))["balanced_accuracy"])
    assert {"balanced_accuracy", "auc_ovr_macro", "auc_ovo_macro", "qwk", "balanced_accuracy_ci"} <= set(field)
    probe = res["linear_probe_slide"]
    assert probe["n_train"] == 12 and probe["n_test"] == 12 and probe["test_ids"][0] == "slide02"
    assert len(probe["runs"]) == 5 and "qwk" in probe["summary"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Metrics as eva and Patho-Bench report them" in md and "linear probe, mean-pooled slides" in md
    assert "| MIL maxpool |" in md and "QWK" in md
    # the same slides in 3 folds: every slide is tested once by a probe fitted without it
    folds = slide_probe(
        [np.ones((3, 4)) * k for k in range(12)] + [np.ones((3, 4)) * -k for k in range(12)],
        [1] * 12 + [0] * 12,
        [f"s{k}" for k in range(24)],
        ["0", "1"],
        [(np.setdiff1d(np.arange(24), np.arange(k, 24, 3)), np.arange(k, 24, 3)) for k in range(3)],
        seeds=(0,),
        n_boot=0,
    )
    assert sorted(folds["test_ids"]) == sorted(f"s{k}" for k in range(24)) and len(folds["folds"]) == 3
