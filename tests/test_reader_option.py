"""``--reader cucim|openslide|tifffile`` on the three verbs that read slides: tile, train and extract."""

from __future__ import annotations

import importlib.util

import pytest

from clusiam_fast.formats.manifest import read_manifest

CMU = "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def tiled(wsi_dir, tmp_path_factory):
    """CMU tiled with ``--reader tifffile``, few patches (--min-tissue 0.95)."""
    from clusiam_fast.tile import main

    out = tmp_path_factory.mktemp("tiled")
    assert main([str(wsi_dir / CMU), "--out", str(out), "--reader", "tifffile", "--min-tissue", "0.95"]) == 0
    return out


def test_tile_reads_with_the_reader_named(tiled):
    (row,) = read_manifest(tiled / "manifest.csv")
    assert row["backend"] == "tifffile" and 0 < int(row["num_patches"]) < 40
    assert "| backend | tifffile |" in (tiled / "summary.md").read_text()


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_train_reads_the_manifest_with_the_reader_named(tiled, tmp_path, reader):
    if importlib.util.find_spec(reader) is None:
        pytest.skip(f"{reader} is not installed")
    from clusiam_fast.train import config_from_args
    from clusiam_fast.training.loader import open_source

    cfg = config_from_args([str(tiled / "manifest.csv"), "--out", str(tmp_path / "run"), "--reader", reader])
    assert cfg.reader == reader
    source = open_source(cfg.data, cfg.reader)
    assert [info.backend for info in source.dataset.slides] == [reader]
    assert source.dataset[0].size == (224, 224)
    assert source.dataset.reader(0).backend == reader
    assert [i.backend for i in open_source(cfg.data).dataset.slides] == ["tifffile"]  # auto: the manifest's
    with pytest.raises(SystemExit):
        config_from_args([str(tiled / "manifest.csv"), "--out", str(tmp_path / "run"), "--reader", "pillow"])


def test_extract_reads_with_the_reader_named_and_says_so(tiled, tmp_path, one_thread):
    pytest.importorskip("torchvision")
    from clusiam_fast.extract import main
    from clusiam_fast.formats.feature_bags import load_bags

    args = ["--encoder", "torchvision:resnet18", "--random-init", "--resize", "64", "--crop", "64"]
    out = tmp_path / "feats"
    assert main([*args, str(tiled / "manifest.csv"), "--out", str(out), "--reader", "openslide", "--workers", "0"]) == 0
    (bag,) = load_bags(out)
    assert bag.attrs["backend"] == "openslide" and bag.attrs["read_level"] == 0
    assert bag.features.shape[0] == int(read_manifest(tiled / "manifest.csv")[0]["num_patches"])


def test_the_dali_slide_source_reads_with_the_reader_named(tiled):
    from clusiam_fast.data.dali_sources import SlideSource

    source = SlideSource(tiled / "manifest.csv", workers=1, reader="openslide")
    assert [info.backend for info in source.dataset.slides] == ["openslide"]
    assert source.dataset.reader(0).backend == "openslide"
    assert [i.backend for i in SlideSource(tiled / "manifest.csv").dataset.slides] == ["tifffile"]
