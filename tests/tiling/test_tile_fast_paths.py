"""The tiler's faster paths give what the slower ones gave: saturation, the QA outline, cohort.json without fsync."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageFilter

from clusiam_fast.slides import open_slide
from clusiam_fast.tiling import TileConfig, detect_tissue, saturation, tile_slides
from clusiam_fast.tiling.thumbnail import _widen

CMU = "CMU-1-Small-Region.svs"


def _cmu_thumbnail(wsi_dir) -> tuple[np.ndarray, float]:
    with open_slide(wsi_dir / CMU) as slide:
        rgb, ds = slide.thumbnail(4)
        return rgb, slide.mpp * ds[0]


def test_saturation_equals_the_float_formula_on_a_real_slide(wsi_dir):
    rgb, _ = _cmu_thumbnail(wsi_dir)
    black = np.zeros((4, 5, 3), np.uint8)
    for image in (rgb, black, rgb[:1, :1]):
        pixels = image.astype(np.float32)
        high, low = pixels.max(-1), pixels.min(-1)
        expected = np.where(high > 0, (high - low) / np.maximum(high, 1.0), 0.0).astype(np.float32)
        got = saturation(image)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_the_qa_outline_is_pillows_3x3_max_filter_of_the_mask_edges(wsi_dir):
    rgb, mpp = _cmu_thumbnail(wsi_dir)
    mask = detect_tissue(rgb, mpp)
    edges = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.FIND_EDGES)
    assert np.asarray(edges).any()  # a real outline, touching the border too
    expected = np.asarray(edges.filter(ImageFilter.MaxFilter(3)))
    np.testing.assert_array_equal(_widen(np.asarray(edges)), expected)
    corner = np.zeros((4, 4), np.uint8)
    corner[0, 0] = 255
    np.testing.assert_array_equal(_widen(corner), np.asarray(Image.fromarray(corner).filter(ImageFilter.MaxFilter(3))))


def test_cohort_json_is_not_fsynced_but_every_output_and_record_is(wsi_dir, tmp_path, monkeypatch):
    """cohort.json, a view of the records rewritten per slide, skips fsync; what a re-run relies on does not."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    report = tile_slides([wsi_dir / CMU], out, TileConfig(), workers=1, progress=False)
    assert report.ok, report.summary()
    names = [os.path.basename(path) for path in synced]
    for kind in (".h5", ".png", ".json"):  # coordinates, QA picture, done record
        assert any(n.endswith(f"{kind}.tmp") for n in names), names
    assert not any(n.startswith(".cohort.json") for n in names), names
    assert json.loads((out / "cohort.json").read_text())["num_done"] == 1
