"""Damaged slides and re-runs: corrupt tile data (zeroed JPEG tiles of a real SVS), manifest merging, --help.

The corrupt slide is the CMU SVS copied to tmp_path with the bytes of some level-0 JPEG
tiles zeroed (found with tifffile's ``dataoffsets`` / ``databytecounts``): cuCIM, the
backend ``auto`` picks for it, would decode them as black / gray filler without an error.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from cohort_slides import zeroed_copy as _zeroed_copy

from clusiam_fast.slides import CorruptTileError, open_slide
from clusiam_fast.slides.integrity import tile_problem
from clusiam_fast.tiling import TileConfig, read_coords_h5, tile_slides

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
OME = "OS-1-detail.ome.tif"


@pytest.fixture
def corrupt_folder(wsi_dir, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    _zeroed_copy(wsi_dir, folder / "broken.svs")
    shutil.copy(wsi_dir / CMU, folder / CMU)
    return folder


@pytest.mark.parametrize("backend", ["cucim", "openslide", "tifffile"])
@pytest.mark.parametrize("part", ["whole", "tail", "middle"])
def test_every_backend_raises_on_zeroed_tile_data_naming_slide_and_region(wsi_dir, tmp_path, backend, part):
    pytest.importorskip(backend)
    parts = {"whole": slice(None), "tail": slice(6000, None), "middle": slice(1500, 5500)}
    slide = _zeroed_copy(wsi_dir, tmp_path / "z.svs", tiles=[53], part=parts[part])
    with open_slide(slide, backend) as reader:
        with pytest.raises(CorruptTileError, match=r"z\.svs: corrupt tile data .*x=700, y=1180, size 300x300") as info:
            reader.read_region((700, 1180), 0, 300)
        assert info.value.region == (700, 1180, 300, 300) and info.value.level == 0
        assert "TIFF tile 53" in str(info.value) and "x=720, y=1200" in str(info.value)
        ok = reader.read_region((0, 0), 0, 480)  # the reader still works elsewhere
        assert ok.shape == (480, 480, 3)
        with pytest.raises(CorruptTileError):
            list(reader.read_regions([(0, 0), (720, 1200)], 0, 224))
        assert [i for i, _ in reader.find_corrupt([(0, 0), (720, 1200), (600, 1100)], 0, 224)] == [1, 2]


def test_intact_slides_have_no_damaged_tile_including_glass(wsi_dir):
    tifffile = pytest.importorskip("tifffile")
    for name in (CMU, TCGA, OME):
        data = (wsi_dir / name).read_bytes()
        with tifffile.TiffFile(wsi_dir / name) as tif:
            for page in tif.pages:
                if not page.is_tiled:
                    continue
                for offset, count in zip(page.dataoffsets, page.databytecounts):
                    assert tile_problem(data[offset : offset + count], page.compression) is None, name
    assert tile_problem(b"\xff\xd8" + b"\x12" * 100 + b"\xff\xd9" + b"\0" * 16, 7) is None  # zero padding after EOI
    assert "end marker" in tile_problem(b"\xff\xd8" + b"\x12" * 100, 7)


def test_uniform_glass_is_not_corrupt(tmp_path):
    """A slide of exact constant colour (pure black and mid-gray, the fillers' values) reads fine."""
    tifffile = pytest.importorskip("tifffile")
    pytest.importorskip("cucim")
    pixels = np.zeros((512, 512, 3), np.uint8)
    pixels[:, 256:] = 128
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="jpeg", photometric="rgb")
    with open_slide(path, "cucim") as reader:
        region = reader.read_region((0, 0), 0, 512)
    assert np.abs(region.astype(int) - pixels).max() <= 2


def test_tiler_fails_the_corrupt_slide_by_name_and_region_and_goes_on(wsi_dir, corrupt_folder, tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "clusiam_fast.tile", str(corrupt_folder), "--out", str(out), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert "FAILED broken.svs: corrupt tile data" in text
    assert "tiled 1 of 2 slides" in done.stdout and "broken.svs: corrupt tile data" in done.stdout
    assert "TIFF tile 53" in done.stdout and "tile at level-0 x=720, y=1200, 240x240 px" in done.stdout
    with open(out / "manifest.csv", newline="") as f:
        assert [r["slide_id"] for r in csv.DictReader(f)] == ["CMU-1-Small-Region"]
    assert not (out / "patches" / "broken.h5").exists()


def test_skip_drops_and_counts_the_patches_and_the_intact_slide_is_unchanged(wsi_dir, corrupt_folder, tmp_path):
    reference = tile_slides([wsi_dir / CMU], tmp_path / "ref", TileConfig(), progress=False)
    assert reference.ok
    config = TileConfig(on_corrupt_tile="skip", save_tiles="jpg")
    report = tile_slides([corrupt_folder], tmp_path / "out", config, progress=False)
    assert report.ok, report.summary()
    rows = {r["slide_id"]: r for r in report.rows}
    dropped = rows["broken"]["corrupt_patches"]
    assert dropped > 0 and f"broken: {dropped} patch(es) dropped" in report.summary()
    assert rows["CMU-1-Small-Region"]["corrupt_patches"] == 0
    coords, attrs = read_coords_h5(tmp_path / "out" / rows["broken"]["h5_path"])
    assert attrs["corrupt_patches"] == dropped == rows["broken"]["corrupt_patches"]
    assert len(list((tmp_path / "out" / "tiles" / "broken").glob("*.jpg"))) == len(coords)
    with open_slide(corrupt_folder / "broken.svs") as reader:  # what is kept reads cleanly
        assert reader.find_corrupt(coords, 0, 224) == []
        patches = reader.read_patches(coords, 0, 224)
    assert not ((patches == 0).all(-1).mean(axis=(1, 2)) > 0.1).any()  # no black filler
    assert not ((patches == 128).all(-1).mean(axis=(1, 2)) > 0.1).any()  # no gray filler
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        manifest = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert manifest["broken"]["corrupt_patches"] == str(dropped)
    # the intact slide tiles identically with the checks on
    same, _ = read_coords_h5(tmp_path / "out" / rows["CMU-1-Small-Region"]["h5_path"])
    before, _ = read_coords_h5(tmp_path / "ref" / "patches" / "CMU-1-Small-Region.h5")
    assert np.array_equal(same, before)


def test_tiling_into_an_existing_folder_merges_the_manifest(wsi_dir, tmp_path):
    out = tmp_path / "out"
    first = tile_slides([wsi_dir / CMU, wsi_dir / OME], out, TileConfig(), progress=False)
    assert first.ok
    again = tile_slides([wsi_dir / CMU], out, TileConfig(min_tissue=0.8), progress=False, redo=True)  # new settings
    assert again.ok and again.kept == 1 and "1 slide(s) tiled earlier" in again.summary()
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["CMU-1-Small-Region", "OS-1-detail"]
    new = again.rows[0]["num_patches"]
    old = next(r["num_patches"] for r in first.rows if r["slide_id"] == "CMU-1-Small-Region")
    assert new < old and rows["CMU-1-Small-Region"]["num_patches"] == str(new)  # replaced, not duplicated
    assert rows["OS-1-detail"]["h5_path"] == "patches/OS-1-detail.h5"  # kept as written
    from clusiam_fast.tiling import read_manifest

    assert {r["slide_id"] for r in read_manifest(out / "manifest.csv")} == set(rows)


def test_help_is_fast_and_the_tiler_never_imports_torch(wsi_dir, tmp_path):
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "clusiam_fast.tile", "--help"], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "--on-corrupt-tile" in done.stdout and "--decode-device" in done.stdout
    assert "torch" not in done.stderr.lower()
    assert elapsed < 3.0  # < 1 s on an idle machine; margin for a loaded CI box
    code = (
        "import sys; from clusiam_fast.tile import main; "
        f"status = main([{str(wsi_dir / CMU)!r}, '--out', {str(tmp_path)!r}, '--workers', '1']); "
        "assert status == 0; assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
