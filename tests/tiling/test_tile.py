"""Tiler on the real slides: read plans, tissue, CLAM h5, manifest, thumbnails, CLI, bad slides."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clusiam_fast.slides import open_slide
from clusiam_fast.tile import main
from clusiam_fast.tiling import (
    CLAM_ATTRS,
    MANIFEST_COLUMNS,
    NoTissueError,
    TileConfig,
    detect_tissue,
    plan_read,
    read_coords_h5,
    saturation,
    tile_slide,
    tile_slides,
)

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
OME = "OS-1-detail.ome.tif"


def _temporary_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def tiled(wsi_dir, tmp_path_factory):
    """The three real slides tiled once (TCGA given 0.25 um/px), with PNG tiles."""
    out = tmp_path_factory.mktemp("tiled")
    report = tile_slides([wsi_dir], out, TileConfig(slide_mpp=0.25, save_tiles="png"), workers=1, progress=False)
    assert report.ok, report.summary()
    return out, report


def test_read_plans_of_the_real_slides(wsi_dir):
    with open_slide(wsi_dir / CMU) as slide:
        plan = plan_read(slide.level_downsamples, slide.mpp, 0.5, 224)
        assert (plan.level, plan.read_size, plan.step) == (0, 224, 224)
    with open_slide(wsi_dir / OME) as slide:
        plan = plan_read(slide.level_downsamples, slide.mpp, 0.5, 224)
        assert (plan.level, plan.read_size) == (0, 493)  # 224 * 0.5 / 0.227
    with open_slide(wsi_dir / TCGA, slide_mpp=0.25) as slide:
        plan = plan_read(slide.level_downsamples, slide.mpp, 0.5, 224)
        assert (plan.level, plan.read_size) == (1, 224)  # its 2x level is read as is
    assert plan_read([1.0], 0.25, 0.5, 224).read_size == 448  # no 2x level: read 448, resize
    assert plan_read([1.0, 4.0], 0.25, 0.5, 224, stride=112).step == 224  # half a patch at level 0


def test_tissue_mask_of_cmu_and_its_guards(wsi_dir):
    with open_slide(wsi_dir / CMU) as slide:
        rgb, (dsx, _) = slide.thumbnail(8)
        mask = detect_tissue(rgb, slide.mpp * dsx)
    assert 0.25 < mask.mean() < 0.5  # the README: about 35-40 % tissue
    sat = saturation(rgb)
    assert sat[mask].mean() > 3 * sat[~mask].mean()
    with open_slide(wsi_dir / OME) as slide:  # a crop inside tissue: no glass, Otsu must not halve it
        rgb, (dsx, _) = slide.thumbnail(4)
        assert detect_tissue(rgb, slide.mpp * dsx).mean() > 0.9
    blank = np.full((200, 300, 3), 240, np.uint8) + np.random.default_rng(0).integers(
        0, 4, (200, 300, 3), dtype=np.uint8
    )
    assert not detect_tissue(blank, 8.0).any()


def test_cmu_patches_lie_inside_tissue(wsi_dir, tiled):
    out, _ = tiled
    coords, attrs = read_coords_h5(out / "patches" / "CMU-1-Small-Region.h5")
    assert 20 < len(coords) < 117  # some, not all, of the 9 x 13 grid
    with open_slide(wsi_dir / CMU) as slide:
        patches = slide.read_patches(coords, attrs["patch_level"], attrs["patch_size"])
        grid = [(x, y) for y in range(0, 2967 - 223, 224) for x in range(0, 2220 - 223, 224)]
        rejected = [xy for xy in grid if not (coords == xy).all(1).any()]
        others = slide.read_patches(rejected, 0, 224)
    kept_tissue = (saturation(patches) > 0.1).mean(axis=(1, 2))
    rejected_tissue = (saturation(others) > 0.1).mean(axis=(1, 2))
    assert np.median(kept_tissue) > 0.5 and kept_tissue.min() > 0.2
    assert np.median(rejected_tissue) < 0.2


def test_h5_files_follow_the_clam_schema(tiled, wsi_dir):
    h5py = pytest.importorskip("h5py")
    out, report = tiled
    rows = {row["slide_id"]: row for row in report.rows}
    for slide_id, row in rows.items():
        with h5py.File(out / row["h5_path"], "r") as f:
            dataset = f["coords"]
            assert dataset.dtype == np.int64 and dataset.ndim == 2 and dataset.shape[1] == 2
            assert len(dataset) == row["num_patches"] > 0
            attrs = dict(dataset.attrs)
        for key in CLAM_ATTRS + ("mpp", "target_mpp", "output_size"):
            assert key in attrs, key
        assert attrs["name"] == slide_id
        assert attrs["patch_size"] == row["read_size"] and attrs["patch_level"] == row["read_level"]
        assert attrs["output_size"] == 224 and attrs["target_mpp"] == 0.5
        with open_slide(wsi_dir / Path(row["slide_path"]).name, slide_mpp=0.25) as slide:
            lw, lh = slide.level_dimensions[row["read_level"]]
            assert tuple(attrs["level_dim"]) == tuple(attrs["downsampled_level_dim"]) == (lw, lh)
            assert attrs["downsample"][0] == pytest.approx(slide.dimensions[0] / lw)
            assert attrs["mpp"] == pytest.approx(slide.mpp)
            coords = read_coords_h5(out / row["h5_path"])[0]
            footprint = attrs["patch_size"] * attrs["downsample"][0]
            w0, h0 = slide.dimensions
            assert (coords >= 0).all() and (coords + footprint <= np.array([w0, h0]) + 1).all()
    assert rows["OS-1-detail"]["read_size"] == 493 and rows["OS-1-detail"]["backend"] == "tifffile"
    assert rows["CMU-1-Small-Region"]["mpp"] == pytest.approx(0.499)


def test_manifest_thumbnails_and_tiles(tiled):
    from PIL import Image

    out, report = tiled
    with open(out / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        rows = list(reader)
    assert sorted(r["slide_id"] for r in rows) == ["CMU-1-Small-Region", "OS-1-detail", "tcga-cr-7395-01a-01-ts1"]
    for row in rows:
        assert Path(row["slide_path"]).is_absolute() and Path(row["slide_path"]).exists()
        assert not Path(row["h5_path"]).is_absolute() and (out / row["h5_path"]).is_file()
        picture = np.asarray(Image.open(out / row["thumbnail"]).convert("RGB"))
        assert max(picture.shape[:2]) <= 1024 + 16
        blue = (picture[..., 2] > 200) & (picture[..., 0] < 60)  # the patch grid is drawn
        assert blue.sum() > 4 * 50
        tiles = sorted((out / "tiles" / row["slide_id"]).glob("*.png"))
        assert len(tiles) == int(row["num_patches"])
        assert Image.open(tiles[0]).size == (224, 224)
        assert tiles[0].name.startswith(row["slide_id"] + "_")
    assert _temporary_leftovers(out) == []


def test_cli_over_the_wsi_folder_reports_the_slide_without_mpp(wsi_dir, tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, "-m", "clusiam_fast.tile", str(wsi_dir), "--out", str(out), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert f"FAILED {TCGA}" in text and "--slide-mpp" in text
    assert "tiled 2 of 3 slides" in done.stdout
    with open(out / "manifest.csv", newline="") as f:
        assert sorted(r["slide_id"] for r in csv.DictReader(f)) == ["CMU-1-Small-Region", "OS-1-detail"]
    assert sorted(p.name for p in (out / "thumbnails").iterdir()) == ["CMU-1-Small-Region.png", "OS-1-detail.png"]
    assert not (out / "patches" / "tcga-cr-7395-01a-01-ts1.h5").exists()
    assert _temporary_leftovers(out) == []


def test_cli_with_slide_mpp_tiles_every_slide(wsi_dir, tmp_path, capsys):
    status = main(
        [
            str(wsi_dir / TCGA),
            str(wsi_dir / CMU),
            "--out",
            str(tmp_path),
            "--slide-mpp",
            "0.25",
            "--workers",
            "1",
            "--min-tissue",
            "0.8",
        ]
    )
    assert status == 0
    assert "tiled 2 of 2 slides" in capsys.readouterr().out
    with open(tmp_path / "manifest.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert rows[TCGA[:-4]]["mpp"] == "0.25" and rows[TCGA[:-4]]["read_level"] == "1"
    assert rows["CMU-1-Small-Region"]["mpp"] == "0.499"  # metadata wins over --slide-mpp
    assert main([str(wsi_dir), "--out", str(tmp_path), "--min-tissue", "2"]) == 2  # bad argument


def test_bad_slides_are_reported_and_the_others_go_on(wsi_dir, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "truncated.svs").write_bytes((wsi_dir / CMU).read_bytes()[:400_000])
    (slides / "notes.tif").write_text("this is not a slide\n")
    os.symlink(wsi_dir / OME, slides / OME)
    out = tmp_path / "out"
    report = tile_slides([slides, tmp_path / "absent.svs"], out, TileConfig(), progress=False)
    assert [r["slide_id"] for r in report.rows] == ["OS-1-detail"]
    failed = {f.path.name: f.error for f in report.failures}
    assert set(failed) == {"truncated.svs", "notes.tif", "absent.svs"}
    assert "corrupt" in failed["truncated.svs"] and "no such file" in failed["absent.svs"]
    assert not report.ok and "3 slide(s) failed" in report.summary()
    assert sorted(p.name for p in (out / "patches").iterdir()) == ["OS-1-detail.h5"]
    assert _temporary_leftovers(out) == []


def test_slide_without_tissue_fails_by_name(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    blank = tmp_path / "blank.tif"
    pixels = np.full((1024, 1024, 3), 243, np.uint8)
    tifffile.imwrite(blank, pixels, tile=(256, 256), resolution=(20000, 20000), resolutionunit="CENTIMETER")
    with pytest.raises(NoTissueError, match="blank.tif: no tissue"):
        tile_slide(blank, tmp_path / "out", TileConfig())
    assert not (tmp_path / "out" / "patches").exists()


def test_rerun_after_the_no_mpp_advice_tiles_only_the_failed_slide(wsi_dir, tmp_path, capsys):
    """The TCGA slide has no mpp: giving --slide-mpp (or a per-slide CSV) afterwards tiles it and leaves the
    slides done with their own metadata mpp alone, without --redo; settings are compared per slide."""
    out = tmp_path / "out"
    assert main([str(wsi_dir), "--out", str(out), "--workers", "1"]) == 1  # TCGA: no mpp
    assert main([str(wsi_dir), "--out", str(out), "--workers", "1", "--slide-mpp", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "tiled 1 of 1 slides" in text and "skipped 2 slide(s)" in text
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert rows[TCGA[:-4]]["mpp"] == "0.5" and rows["CMU-1-Small-Region"]["mpp"] == "0.499"
    # another --slide-mpp does not touch the metadata slides, but is a change for TCGA (it used it)
    table = tmp_path / "mpp.csv"
    table.write_text(f"wsi,mpp\n{TCGA},0.25\n{CMU},0.3\n")  # TRIDENT's column names; metadata wins for CMU
    assert main([str(wsi_dir), "--out", str(out), "--workers", "1", "--slide-mpp-csv", str(table)]) == 2
    assert f"{TCGA[:-4]}: slide_mpp: 0.5 -> 0.25" in capsys.readouterr().err
    assert main([str(wsi_dir), "--out", str(out), "--workers", "1", "--slide-mpp", "0.7"]) == 2
    capsys.readouterr()
    # a fresh folder from the CSV alone (slide_id column): every slide tiled, each at its own mpp
    table.write_text(f"slide_id,mpp\n{TCGA[:-4]},0.25\nCMU-1-Small-Region,0.3\nOS-1-detail,\n")
    assert main([str(wsi_dir), "--out", str(tmp_path / "csv"), "--workers", "1", "--slide-mpp-csv", str(table)]) == 0
    with open(tmp_path / "csv" / "manifest.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert rows[TCGA[:-4]]["mpp"] == "0.25" and rows["CMU-1-Small-Region"]["mpp"] == "0.499" and len(rows) == 3
    capsys.readouterr()
    table.write_text(f"slide_id,mpp\n{TCGA[:-4]},abc\n")
    assert main([str(wsi_dir), "--out", str(tmp_path / "bad"), "--slide-mpp-csv", str(table)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(table) in err[0] and "line 2" in err[0] and "'abc'" in err[0]


def test_qa_thumbnail_outlines_tissue_over_its_true_colours(wsi_dir):
    """Tissue away from its outline keeps the slide's own colours (staining and decoding can be judged)."""
    from scipy import ndimage

    from clusiam_fast.tiling.thumbnail import draw_qa_thumbnail

    with open_slide(wsi_dir / CMU) as slide:
        rgb, ds = slide.thumbnail(4)
        mask = detect_tissue(rgb, slide.mpp * ds[0])
    picture = np.asarray(draw_qa_thumbnail(rgb, ds, mask, np.zeros((0, 2), np.int64), 448, "t", max_side=4096))
    body = picture[16:]  # below the title bar
    assert body.shape == rgb.shape
    square = np.ones((3, 3), bool)  # the outline is 8-connected, 3 px wide
    inside = ndimage.binary_erosion(mask, square, iterations=3)
    assert inside.sum() > 1000
    np.testing.assert_array_equal(body[inside], rgb[inside])
    outside = ~ndimage.binary_dilation(mask, square, iterations=3)
    np.testing.assert_array_equal(body[outside], rgb[outside])
    edge = mask & ~ndimage.binary_erosion(mask)
    green = (body[..., 1] == 200) & (body[..., 0] == 0) & (body[..., 2] == 0)
    assert green[edge].mean() > 0.9  # the outline is drawn


def test_symlinked_slides_keep_their_link_names_and_a_dangling_link_is_a_failed_slide(wsi_dir, tmp_path, capsys):
    """Were: ids from the targets' names (two slide.svs collided); a dangling link exited 1 with num_failed 0."""
    import json

    for sub, target in (("a", CMU), ("b", OME)):  # two different files, both named slide.svs
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "slide.svs").symlink_to(wsi_dir / target)
    given = tmp_path / "given"
    given.mkdir()
    (given / "patient1.svs").symlink_to(tmp_path / "a" / "slide.svs")
    (given / "patient2.svs").symlink_to(tmp_path / "b" / "slide.svs")
    (given / "gone.svs").symlink_to(tmp_path / "nowhere" / "gone.svs")
    out = tmp_path / "out"
    assert main([str(given), "--out", str(out)]) == 1
    assert "gone.svs: a symbolic link to" in capsys.readouterr().err
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["patient1", "patient2"]
    assert rows["patient1"]["slide_path"] == str(given / "patient1.svs")  # the name given, not the target's
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["num_failed"] == 1 and cohort["done"] == ["patient1", "patient2"]
    assert "which does not exist" in cohort["failed"]["gone"]["reason"]
    # named on the command line, a dangling link is a failed slide too
    assert main([str(given / "gone.svs"), "--out", str(tmp_path / "out2")]) == 1
    assert json.loads((tmp_path / "out2" / "cohort.json").read_text())["num_failed"] == 1
