"""benchmarks/make_cohort.py: synthetic Aperio SVS slides of real tissue, opened by all three readers, tiled."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from clusiam_fast.slides import open_slide
from clusiam_fast.tiling import read_coords_h5

REPO = Path(__file__).resolve().parents[2]
SIZE = (2560, 2048)  # two levels (x1, x4), 10 x 8 tiles of 256


def _load_module():
    spec = importlib.util.spec_from_file_location("make_cohort", REPO / "benchmarks" / "make_cohort.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_cohort", module)
    spec.loader.exec_module(module)
    return module


mc = _load_module()


@pytest.fixture(scope="module")
def sources(wsi_dir):
    return [wsi_dir / name for name in mc.DEFAULT_SOURCES]


@pytest.fixture(scope="module")
def cohort(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return mc.write_cohort(out, 2, SIZE, seed=3, sources=sources, workers=1)


def test_cohort_files_are_named_and_reproducible(cohort, sources, tmp_path):
    assert [p.name for p in cohort] == ["cohort_000.svs", "cohort_001.svs"]
    assert not [p for p in cohort[0].parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    again = mc.write_slide(tmp_path / "cohort_000.svs", SIZE, seed=3000, sources=sources, workers=2)
    assert again.read_bytes() == cohort[0].read_bytes()  # seed 3 -> slide 0 has seed 3000; threads do not matter
    assert cohort[0].read_bytes() != cohort[1].read_bytes()


def test_openslide_cucim_tifffile_open_it_alike(cohort):
    openslide = pytest.importorskip("openslide")
    cucim = pytest.importorskip("cucim")
    tifffile = pytest.importorskip("tifffile")
    path = cohort[0]
    dims = ((2560, 2048), (640, 512))
    slide = openslide.OpenSlide(str(path))
    assert slide.properties["openslide.vendor"] == "aperio"
    assert slide.level_dimensions == dims
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5)
    assert slide.properties["openslide.objective-power"] == "20"
    assert set(slide.associated_images) == {"thumbnail", "label", "macro"}
    slide.close()
    assert tuple(map(tuple, cucim.CuImage(str(path)).resolutions["level_dimensions"])) == dims
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail", "Label", "Macro"]
        assert [level.shape[:2][::-1] for level in tif.series[0].levels] == list(dims)
    # clusiam_fast's readers: same geometry, mpp and pixels (at downsample-aligned places, where
    # OpenSlide's and cuCIM's rounding of level-0 locations agree)
    readers = [open_slide(path, backend) for backend in ("cucim", "openslide", "tifffile")]
    try:
        for reader in readers:
            assert reader.level_dimensions == dims and reader.level_downsamples == (1.0, 4.0)
            assert reader.mpp == pytest.approx(0.5)
        for level, location in ((0, (1000, 700)), (1, (1000, 700))):
            regions = [r.read_region(location, level, (300, 300)) for r in readers]
            assert regions[2].std() > 10  # not all glass
            np.testing.assert_array_equal(regions[0], regions[2])
            np.testing.assert_array_equal(regions[1], regions[2])
    finally:
        for reader in readers:
            reader.close()


def test_tiler_keeps_the_tissue_cells(cohort, tmp_path):
    out = tmp_path / "tiled"
    run = subprocess.run(
        [sys.executable, "-m", "clusiam_fast.tile", str(cohort[0].parent), "--out", str(out), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    rows = {row["slide_id"]: row for row in csv.DictReader(open(out / "manifest.csv"))}
    assert set(rows) == {"cohort_000", "cohort_001"}
    loaded = mc.load_sources([mc.SHARED_WSI / n for n in mc.DEFAULT_SOURCES], 0.5, 512, [1, 4])
    gx, gy = np.meshgrid(np.arange(SIZE[0] // 224) * 224, np.arange(SIZE[1] // 224) * 224)
    for i, slide_id in enumerate(sorted(rows)):
        coords, _ = read_coords_h5(out / "patches" / f"{slide_id}.h5")
        assert int(rows[slide_id]["num_patches"]) == len(coords)
        tissue = mc.make_mosaic(*SIZE, 512, loaded, np.random.default_rng(3000 + i)).pieces[..., 0] >= 0
        # grid patches touching a tissue cell (an upper bound: the rest is glass) and lying inside one
        # (a lower one: the source blocks are at least 40 % tissue, so a good share of these is kept)
        corners = [tissue[(gy + dy) // 512, (gx + dx) // 512] for dy in (0, 223) for dx in (0, 223)]
        touching, inside = np.logical_or.reduce(corners).sum(), np.logical_and.reduce(corners).sum()
        assert 0.3 * inside <= len(coords) <= touching, (len(coords), inside, touching)
        centres = (coords + 112) // 512
        assert tissue[centres[:, 1], centres[:, 0]].mean() > 0.9  # on tissue cells, not on the glass around


def test_write_is_tiled_not_whole(sources, tmp_path):
    """Writing never holds a level: peak traced memory stays far below level 0's 75 MB of pixels."""
    size = (6144, 4096)
    loaded = mc.load_sources(sources, 0.5, 512, mc.pyramid_downsamples(*size, 256))
    tracemalloc.start()
    try:
        mc.write_slide(tmp_path / "m.svs", size, loaded=loaded, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20e6, f"peak {peak / 1e6:.0f} MB"


def test_bad_arguments_are_named(sources, tmp_path, capsys):
    with pytest.raises(ValueError, match="smaller than one tile"):
        mc.write_slide(tmp_path / "a.svs", (100, 3000), sources=sources)
    with pytest.raises(FileNotFoundError, match="nope.svs"):
        mc.write_slide(tmp_path / "a.svs", (1000, 1000), sources=[tmp_path / "nope.svs"])
    with pytest.raises(SystemExit):
        mc.main([str(tmp_path), "--size", "8000by6000"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
