"""``extract --eva-manifest``: eva's embeddings layout, read back the way eva's datasets read it.

eva (kaiko-ai/eva) is not a dependency; its readers are short and are followed step by step
here: ``EmbeddingsDataset._load_manifest`` (``manifest.csv`` under ``root``, rows of one
``split``), ``EmbeddingsClassificationDataset`` (``torch.load`` of ``root/embeddings``, a ``[D]``
or ``[1, D]`` tensor, an integer ``target``) and ``MultiEmbeddingsClassificationDataset`` (rows
grouped by ``wsi_id``, tensors stacked to ``[N, D]``, one target per group). With eva installed,
its own classes read the same folder.
"""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pandas as pd
import torch

from clusiam_fast.extract import main as extract_main
from clusiam_fast.formats.feature_bags import load_bags


def _backbone(path):
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    return path


FLAGS = ["--resize", "32", "--workers", "0", "--quiet", "--mean", "0.7", "0.55", "0.7", "--std", "0.15", "0.2", "0.15"]


def _eva_rows(root, split):
    """eva's EmbeddingsDataset._load_manifest."""
    data = pd.read_csv(os.path.join(root, "manifest.csv"))
    return data.loc[data["split"] == split].reset_index(drop=True)


def test_patch_embeddings_for_eva(crc_dir, tmp_path):
    rows = []
    for k, p in enumerate(sorted((crc_dir / "kather2016").glob("*.png"))):
        label = re.search(r"_label_(\d)", p.name).group(1)
        rows.append({"path": f"kather2016/{p.name}", "label": label, "split": "test" if k % 4 == 0 else "train"})
    with open(tmp_path / "patches.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split"])
        writer.writeheader(), writer.writerows(rows)
    out = tmp_path / "feats"
    argv = [str(_backbone(tmp_path / "b.pt")), str(crc_dir), "--out", str(out), *FLAGS]
    assert extract_main([*argv, "--eva-manifest", str(tmp_path / "patches.csv")]) == 0
    root = out / "eva"
    classes = json.loads((root / "classes.json").read_text())
    assert list(classes.values()) == [str(c) for c in range(8)]
    bags = {b.slide_id: b for b in load_bags(out)}
    by_path = dict(zip(bags["kather2016"].paths, bags["kather2016"].features))
    for split, expected in (("train", 75), ("test", 25)):
        data = _eva_rows(root, split)
        assert len(data) == expected and list(data.columns[:4]) == ["origin", "embeddings", "target", "split"]
        for _, row in data.iterrows():
            emb = torch.load(os.path.join(root, row["embeddings"]), map_location="cpu")  # eva's _load_embeddings
            assert emb.dtype == torch.float32 and emb.squeeze(0).shape == (512,)
            assert np.allclose(emb.numpy(), by_path[row["origin"]], atol=1e-6)
            label = next(r["label"] for r in rows if r["path"] == row["origin"])
            assert classes[str(int(row["target"]))] == label
    try:  # eva itself, when installed
        from eva.core.data.datasets import EmbeddingsClassificationDataset
    except ImportError:
        return
    ds = EmbeddingsClassificationDataset(root=str(root), manifest_file="manifest.csv", split="test")
    ds.setup()
    assert len(ds) == 25 and ds[0][0].shape[-1] == 512


def test_slide_embeddings_for_eva(pcam_dir, tmp_path):
    images = (
        sorted((pcam_dir / "valid" / "1").glob("*.jpg"))[:12] + sorted((pcam_dir / "valid" / "0").glob("*.jpg"))[:12]
    )
    slides = []
    for s in range(6):
        folder = tmp_path / "slides" / f"s{s}"
        folder.mkdir(parents=True)
        for p in images[4 * s : 4 * s + 4]:
            (folder / p.name).symlink_to(p)
        slides.append(
            {"slide_id": f"s{s}", "label": "tumour" if s < 3 else "normal", "split": "test" if s % 3 == 0 else "train"}
        )
    with open(tmp_path / "slides.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "label", "split"])
        writer.writeheader(), writer.writerows(slides)
    out = tmp_path / "feats"
    argv = [str(_backbone(tmp_path / "b.pt")), str(tmp_path / "slides"), "--out", str(out), *FLAGS]
    assert extract_main([*argv, "--eva-manifest", str(tmp_path / "slides.csv")]) == 0
    root = out / "eva"
    classes = json.loads((root / "classes.json").read_text())
    assert classes == {"0": "normal", "1": "tumour"}
    bags = {b.slide_id: b for b in load_bags(out)}
    data = _eva_rows(root, "test")
    for wsi_id in data["wsi_id"].unique():  # eva's MultiEmbeddingsClassificationDataset
        paths = data.loc[data["wsi_id"] == wsi_id, "embeddings"].to_list()
        stacked = torch.cat([torch.load(os.path.join(root, p), map_location="cpu") for p in paths])
        assert stacked.ndim == 2 and stacked.shape == (4, 512)
        assert np.allclose(stacked.numpy(), bags[wsi_id].features, atol=1e-6)
        (target,) = data.loc[data["wsi_id"] == wsi_id, "target"].unique()
        assert classes[str(target)] == next(s["label"] for s in slides if s["slide_id"] == wsi_id)
    assert sorted(data["wsi_id"]) == ["s0", "s3"]
