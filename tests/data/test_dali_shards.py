"""Webdataset shards (packing, DALI index files) and patches read straight from slides by DALI."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from clusiam_fast.data.augment import Recipe  # noqa: E402
from clusiam_fast.data.dali import build_dali_loader  # noqa: E402
from clusiam_fast.data.shards import pack_images  # noqa: E402
from clusiam_fast.shards import main as shards_main  # noqa: E402

COLOUR_KEPT = Recipe(p_jitter=0.0, p_gray=0.0)
IDENTITY = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)


def solid_images(folder: Path, n: int) -> list[str]:
    """``n`` solid-colour PNGs: image ``i`` has red = 5 i, so a view's colour names its image."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(np.full((20, 20, 3), (5 * i, 100, 50), np.uint8)).save(path)
        paths.append(str(path))
    return paths


def ids(loader) -> list[int]:
    out = []
    for v1, _v2 in loader:
        red = v1[:, 0].flatten(1)
        assert torch.all(red.amax(1) == red.amin(1))
        out += [int(round(r / 5)) for r in red[:, 0].tolist()]
    return out


def test_pack_folder_writes_tars_with_valid_dali_indexes(tmp_path):
    paths = solid_images(tmp_path / "imgs", 23)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)  # truncated PNG
    summary = pack_images(paths + [str(tmp_path / "imgs" / "broken.png")], tmp_path / "shards", shard_size=10)
    assert summary["num_samples"] == 23 and summary["num_shards"] == 3
    assert [s["item"] for s in summary["skipped"]] == [str(tmp_path / "imgs" / "broken.png")]
    assert json.loads((tmp_path / "shards" / "shards.json").read_text())["num_samples"] == 23
    seen_sources = []
    for name in summary["shards"]:
        tar_path = tmp_path / "shards" / name
        lines = tar_path.with_suffix(".idx").read_text().splitlines()
        version, count = lines[0].split()
        assert version == "v1.2" and int(count) == len(lines) - 1
        raw = tar_path.read_bytes()
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for line in lines[1:]:
            fields = line.split()
            for ext, offset, size, member in zip(fields[0::4], fields[1::4], fields[2::4], fields[3::4]):
                # The index points at each member's bytes inside the tar.
                assert raw[int(offset) : int(offset) + int(size)] == members[member]
                assert member.endswith("." + ext)
                if ext == "json":
                    seen_sources.append(json.loads(members[member])["source"])
    assert sorted(seen_sources) == sorted(paths)
    assert seen_sources != paths  # shuffled before packing
    # Packing again into the same folder leaves exactly the new shards.
    pack_images(paths, tmp_path / "shards", shard_size=30)
    assert sorted(p.name for p in (tmp_path / "shards").glob("shard-*")) == ["shard-000000.idx", "shard-000000.tar"]


def test_dali_reads_shards_and_splits_them_across_ranks(tmp_path):
    paths = solid_images(tmp_path / "imgs", 40)
    assert shards_main([str(tmp_path / "imgs"), "--out", str(tmp_path / "shards"), "--shard-size", "16"]) == 0
    ranks = [
        build_dali_loader(
            str(tmp_path / "shards"),
            batch_size=5,
            crop_size=16,
            recipe=COLOUR_KEPT,
            shard_id=r,
            num_shards=2,
            seed=1,
            **IDENTITY,
        )
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for _epoch in range(2):
        seen = [ids(loader) for loader in ranks]
        assert len(seen[0]) == len(seen[1]) == 20
        assert len(set(seen[0])) == 20 and not set(seen[0]) & set(seen[1])
    v1, v2 = next(
        iter(build_dali_loader(sorted((tmp_path / "shards").glob("*.tar")), batch_size=8, crop_size=24, **IDENTITY))
    )
    assert v1.shape == v2.shape == (8, 3, 24, 24)
    assert len(paths) == 40


def test_shards_need_their_index(tmp_path):
    solid_images(tmp_path / "imgs", 4)
    pack_images(sorted(str(p) for p in (tmp_path / "imgs").glob("*.png")), tmp_path / "shards")
    (tmp_path / "shards" / "shard-000000.idx").unlink()
    with pytest.raises(FileNotFoundError, match="shard-000000.idx"):
        build_dali_loader(str(tmp_path / "shards"), batch_size=2, crop_size=8, **IDENTITY)


@pytest.fixture(scope="module")
def cmu_manifest(wsi_dir, tmp_path_factory) -> Path:
    tiling = pytest.importorskip("clusiam_fast.tiling.pipeline")
    out = tmp_path_factory.mktemp("tiles")
    report = tiling.tile_slides([wsi_dir / "CMU-1-Small-Region.svs"], out, tiling.TileConfig(), progress=False)
    if not (out / "manifest.csv").exists():
        pytest.skip(f"the tiler could not tile the CMU slide: {report}")
    return out / "manifest.csv"


def test_dali_reads_patches_from_slides(cmu_manifest):
    """A tiler manifest as source: patches read by DALI's worker processes, augmented, split by rank."""
    loaders = [
        build_dali_loader(
            str(cmu_manifest),
            batch_size=8,
            crop_size=32,
            shard_id=r,
            num_shards=2,
            seed=0,
            py_workers=2,
            mean=(0.7, 0.6, 0.7),
            std=(0.2, 0.2, 0.2),
        )
        for r in (0, 1)
    ]
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    total = len(SlidePatchDataset(str(cmu_manifest)))
    assert len(loaders[0]) == len(loaders[1]) == (total // 2) // 8
    batches = list(loaders[0])
    assert len(batches) == len(loaders[0])
    v1, v2 = batches[0]
    assert v1.shape == v2.shape == (8, 3, 32, 32) and torch.isfinite(v1).all()
    assert not torch.equal(v1, v2)
    again = list(
        build_dali_loader(
            str(cmu_manifest),
            batch_size=8,
            crop_size=32,
            shard_id=0,
            num_shards=2,
            seed=0,
            py_workers=1,
            mean=(0.7, 0.6, 0.7),
            std=(0.2, 0.2, 0.2),
        )
    )
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def test_pack_manifest_into_shards(cmu_manifest, tmp_path):
    from clusiam_fast.data.shards import pack_manifest

    summary = pack_manifest(cmu_manifest, tmp_path / "shards", shard_size=16, workers=0)
    assert summary["num_samples"] > 0 and not summary["skipped"]
    loader = build_dali_loader(str(tmp_path / "shards"), batch_size=4, crop_size=32, **IDENTITY)
    v1, _ = next(iter(loader))
    assert v1.shape == (4, 3, 32, 32)
    with tarfile.open(tmp_path / "shards" / summary["shards"][0]) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["slide_id"] == "CMU-1-Small-Region" and {"x", "y"} <= set(meta)


def test_shards_cli_packs_a_tiler_folder_patches_not_its_thumbnails(cmu_manifest, tmp_path):
    """DATA is resolved as for train: a tiler output folder means its manifest, never its QA pictures."""
    from clusiam_fast.data.slide_dataset import SlidePatchDataset
    from clusiam_fast.shards import main

    folder = cmu_manifest.parent
    assert any(p.suffix.lower() in (".png", ".jpg") for p in folder.rglob("*")), "the tiler wrote no QA picture"
    assert main([str(folder), "--out", str(tmp_path / "shards"), "--workers", "0"]) == 0
    summary = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert summary["num_samples"] == len(SlidePatchDataset(str(cmu_manifest))) > 1
    assert summary["source"] == str(cmu_manifest)
