"""The outputs users expect from a tiler, on the shared slides: GeoJSON contours, mask, overlay, mosaic,
per-slide parameters, --overlap and the run's summary.md."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clusiam_fast.tile import main
from clusiam_fast.tiling import read_coords_h5

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
OME = "OS-1-detail.ome.tif"


@pytest.fixture(scope="module")
def cmu_out(wsi_dir, tmp_path_factory):
    """CMU tiled once by the CLI, with a broken file beside it (a failure for summary.md)."""
    folder = tmp_path_factory.mktemp("slides")
    os.symlink(wsi_dir / CMU, folder / CMU)
    (folder / "broken.svs").write_text("not a slide\n")
    out = tmp_path_factory.mktemp("out")
    assert main([str(folder), "--out", str(out), "--workers", "1"]) == 1  # broken.svs failed
    return out


def _mask(out: Path, slide_id: str) -> tuple[np.ndarray, tuple[float, float]]:
    from PIL import Image

    image = Image.open(out / "masks" / f"{slide_id}.png")
    dsx, dsy = (float(v) for v in image.text["downsample"].split())
    return np.asarray(image) > 127, (dsx, dsy)


def test_geojson_contours_hold_the_mask_area(cmu_out):
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    mask, (dsx, dsy) = _mask(cmu_out, "CMU-1-Small-Region")
    assert 0.25 < mask.mean() < 0.5  # the README: about 35-40 % tissue
    collection = json.loads((cmu_out / "contours" / "CMU-1-Small-Region.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    pieces = [shape(f["geometry"]) for f in collection["features"]]
    for feature, piece in zip(collection["features"], pieces):
        assert feature["properties"]["objectType"] == "annotation"  # QuPath's import reads these
        assert feature["properties"]["classification"]["name"] == "Tissue"
        assert piece.is_valid and piece.geom_type == "Polygon"
    tissue = shapely.union_all(pieces)
    assert tissue.area == pytest.approx(mask.sum() * dsx * dsy, rel=0.03)  # level-0 px, as QuPath wants
    x0, y0, x1, y1 = tissue.bounds
    assert x0 >= 0 and y0 >= 0 and x1 <= 2220 and y1 <= 2967
    # each mask pixel's centre lies inside the contours exactly when it is tissue (but near the outline)
    rows, cols = np.mgrid[0 : mask.shape[0] : 7, 0 : mask.shape[1] : 7]
    points = shapely.points((cols.ravel() + 0.5) * dsx, (rows.ravel() + 0.5) * dsy)
    inside = shapely.contains(tissue, points)
    near = shapely.distance(tissue.boundary, points) < 1.5 * max(dsx, dsy)
    truth = mask[rows.ravel(), cols.ravel()]
    assert (inside == truth)[~near].all()


def test_overlay_and_mosaic_show_the_patches(cmu_out):
    from PIL import Image

    coords, attrs = read_coords_h5(cmu_out / "patches" / "CMU-1-Small-Region.h5")
    overlay = np.asarray(Image.open(cmu_out / "thumbnails" / "CMU-1-Small-Region.png").convert("RGB")).astype(int)
    green = (overlay[..., 1] > 180) & (overlay[..., 0] < 40) & (overlay[..., 2] < 40)  # contours
    blue = (overlay[..., 2] > 200) & (overlay[..., 0] < 60)  # patch grid
    assert green.sum() > 200 and blue.sum() > 200
    mosaic = np.asarray(Image.open(cmu_out / "mosaics" / "CMU-1-Small-Region.png").convert("RGB"))
    shown = mosaic.any(-1).mean()
    covered = len(coords) * 224 * 224 / (2220 * 2967)
    assert shown == pytest.approx(covered, rel=0.1)  # the kept patches, nothing else
    assert mosaic[mosaic.any(-1)].mean() > 100  # their true colours, not a mask


def test_summary_md_tells_the_run(cmu_out):
    text = (cmu_out / "summary.md").read_text()
    assert "slides tiled: 1; failed: 1" in text
    assert "| CMU-1-Small-Region |" in text and "broken.svs" in text and "unknown, unsupported or corrupt" in text
    assert "| target_mpp | 0.5 |" in text and "| tissue.min_saturation | 0.05 |" in text
    patches = len(read_coords_h5(cmu_out / "patches" / "CMU-1-Small-Region.h5")[0])
    assert f"- patches: {patches}" in text


def test_overlap_steps_the_grid(wsi_dir, tmp_path):
    out = tmp_path / "out"
    argv = [str(wsi_dir / CMU), "--out", str(out), "--overlap", "112", "--coords-format", "trident"]
    assert main(argv + ["--min-tissue", "0"]) == 0
    coords, attrs = read_coords_h5(out / "patches" / "CMU-1-Small-Region_patches.h5")
    assert attrs["overlap"] == 112
    assert sorted(set(coords[:, 0]))[:3] == [0, 112, 224]  # level 0 at 0.499 um/px: 112 px steps
    assert len(coords) == len(range(0, 2220 - 223, 112)) * len(range(0, 2967 - 223, 112))
    with pytest.raises(SystemExit):
        main(argv + ["--stride", "100"])  # one or the other
    assert main([str(wsi_dir / CMU), "--out", str(tmp_path / "o2"), "--overlap", "224"]) == 2


def _write_params(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["slide_id", "mpp", "min_tissue", "tissue_threshold", "min_area_um2", "keep"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_slide_params_csv_is_honoured_per_slide_and_on_reruns(wsi_dir, tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in (CMU, TCGA, OME):
        shutil.copyfile(wsi_dir / name, folder / name) if name == OME else os.symlink(wsi_dir / name, folder / name)
    out = tmp_path / "out"
    params = _write_params(
        tmp_path / "params.csv",
        [
            {"slide_id": "CMU-1-Small-Region", "min_tissue": "0.95"},
            {"slide_id": "tcga-cr-7395-01a-01-ts1", "mpp": "0.25"},  # it has none in its metadata
            {"slide_id": "OS-1-detail", "keep": "0"},
        ],
    )
    assert main([str(folder), "--out", str(out), "--workers", "1", "--slide-params", str(params)]) == 0
    done = {p.stem: json.loads(p.read_text()) for p in (out / "done").glob("*.json")}
    assert sorted(done) == ["CMU-1-Small-Region", "tcga-cr-7395-01a-01-ts1"]  # OS-1-detail left out
    strict = done["CMU-1-Small-Region"]["result"]["num_patches"]
    assert "Slides left out" in (out / "summary.md").read_text()

    # OUT/slide_params.csv lists every slide with what it was given: edited and passed back, it redoes CMU alone
    # (its new threshold) and OS-1-detail (no longer left out); TCGA's row is unchanged: skipped
    template = out / "slide_params.csv"
    with open(template, newline="") as f:
        rows = {r["slide_id"]: r for r in csv.DictReader(f)}
    assert rows["tcga-cr-7395-01a-01-ts1"]["mpp"] == "0.25" and rows["OS-1-detail"]["keep"] == "0"
    assert rows["CMU-1-Small-Region"]["min_tissue"] == "0.95" and rows["CMU-1-Small-Region"]["mpp"] == ""
    rows["CMU-1-Small-Region"]["min_tissue"], rows["OS-1-detail"]["keep"] = "0.5", ""
    edited = _write_params(tmp_path / "edited.csv", list(rows.values()))
    tcga_time = done["tcga-cr-7395-01a-01-ts1"]["time"]
    capsys.readouterr()
    assert main([str(folder), "--out", str(out), "--workers", "1", "--slide-params", str(edited)]) == 0
    assert "skipped 1 slide(s) already tiled" in capsys.readouterr().out
    again = {p.stem: json.loads(p.read_text()) for p in (out / "done").glob("*.json")}
    assert again["tcga-cr-7395-01a-01-ts1"]["time"] == tcga_time
    assert again["CMU-1-Small-Region"]["result"]["num_patches"] > strict
    assert "OS-1-detail" in again  # no longer left out: tiled now
    assert not (out / "params" / "OS-1-detail.json").exists()  # a row of empty cells: the run's settings
    # the template as written, passed back unchanged, redoes nothing
    assert main([str(folder), "--out", str(out), "--workers", "1", "--slide-params", str(template)]) == 0
    assert "skipped 3 slide(s) already tiled" in capsys.readouterr().out


def test_slide_params_csv_errors_name_the_file_and_line(tmp_path, wsi_dir, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,min_tissue\nCMU-1-Small-Region,1.5\n")
    assert main([str(wsi_dir / CMU), "--out", str(tmp_path / "o"), "--slide-params", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.csv line 2: min_tissue '1.5'" in err
    bad.write_text("slide_id,colour\nx,red\n")
    assert main([str(wsi_dir / CMU), "--out", str(tmp_path / "o"), "--slide-params", str(bad)]) == 2
    assert "unknown: ['colour']" in capsys.readouterr().err


def test_contours_keep_holes_and_islands_in_holes():
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    from clusiam_fast.tiling.contours import contours_geojson

    mask = np.zeros((200, 200), bool)
    mask[20:180, 20:180] = True  # tissue
    mask[60:140, 60:140] = False  # a hole in it
    mask[90:110, 90:110] = True  # an island in the hole
    features = contours_geojson(mask, (2.0, 3.0), "s")["features"]
    pieces = [shape(f["geometry"]) for f in features]
    assert [len(p.interiors) for p in pieces] == [1, 0]  # largest first: the ring with its hole, then the island
    assert shapely.union_all(pieces).area == pytest.approx(mask.sum() * 6.0, rel=0.01)
    tissue = shapely.union_all(pieces)
    assert tissue.contains(shapely.Point(40 * 2, 40 * 3)) and tissue.contains(shapely.Point(100 * 2, 100 * 3))
    assert not tissue.contains(shapely.Point(75 * 2, 75 * 3))  # in the hole
