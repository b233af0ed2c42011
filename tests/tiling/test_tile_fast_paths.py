"""The tiler's faster paths give what the slower ones gave: saturation, the QA outline, the mask operations in
numpy (no scipy, no skimage), and cohort.json without fsync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from clusiam_fast.slides import open_slide
from clusiam_fast.tiling import TileConfig, detect_tissue, saturation, tile_slides
from clusiam_fast.tiling.thumbnail import _widen

CMU = "CMU-1-Small-Region.svs"
REPO = Path(__file__).resolve().parents[2]


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


def test_coordinates_and_manifest_are_fsynced_the_rest_not(wsi_dir, tmp_path, monkeypatch):
    """The h5 file reaches the disk before the done record is written, and the manifest; the record and the QA
    picture (lost or emptied in a crash: the slide is redone), the lock and cohort.json (a view) skip fsync."""
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
    kinds = [n.split(".")[1:3] for n in names]  # .<name>.<ext>.<pid>-<token>.<ext>.tmp
    assert kinds == [["CMU-1-Small-Region", "h5"], ["manifest", "csv"]], names
    assert json.loads((out / "cohort.json").read_text())["num_done"] == 1


def test_mask_ops_give_what_scipy_and_skimage_give_on_a_real_slide(wsi_dir):
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    from clusiam_fast.tiling.mask_ops import Runs, gaussian_nearest, otsu_threshold

    rgb, _ = _cmu_thumbnail(wsi_dir)
    sat = saturation(rgb)
    for sigma in (0.4, 1.0, 2.5, 6.3):
        smooth = gaussian_nearest(sat, sigma)
        np.testing.assert_array_equal(smooth, ndimage.gaussian_filter(sat, sigma=sigma, mode="nearest"))  # bit for bit
        assert otsu_threshold(smooth) == threshold_otsu(smooth)
    assert otsu_threshold(np.full((3, 3), 0.25, np.float32)) == threshold_otsu(np.full((3, 3), 0.25, np.float32))
    rng = np.random.default_rng(0)
    masks = [sat > 0.05, sat > 0.2, rng.random((40, 70)) > 0.45, np.zeros((5, 5), bool), np.ones((1, 9), bool)]
    for mask in masks + [~m for m in masks]:
        for diagonal in (True, False):
            labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool) if diagonal else None)
            runs = Runs(mask, diagonal)
            assert runs.count == count
            sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
            assert sorted(runs.sizes().astype(int)) == sorted(sizes)  # the same components: same sizes
            for k in range(min(count, 20)):  # each one painted back is one of scipy's
                piece = runs.paint(np.arange(runs.count) == k)
                assert len(np.unique(labels[piece])) == 1 and piece.sum() == sizes[labels[piece][0] - 1]


def test_tiling_a_slide_imports_no_scipy_and_of_skimage_only_the_contour_tracer(wsi_dir, tmp_path):
    """SciPy and skimage's filters cost a quarter of a CPU second per process (scipy.special): more than a small
    slide's tiling. The GeoJSON contours use skimage's marching squares alone (about 0.13 CPU s, preloaded by the
    workers' fork server)."""
    code = (
        "import sys; from clusiam_fast.tiling import tile_slide; "
        f"tile_slide({str(wsi_dir / CMU)!r}, {str(tmp_path)!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('scipy', 'skimage')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(eval(done.stdout.strip()))
    assert not {m for m in loaded if m.startswith("scipy")}, loaded
    assert {m for m in loaded if not m.startswith(("skimage._shared", "skimage.measure._find_contours"))} <= {
        "skimage",
        "skimage.measure",
    }, loaded


def test_a_rerun_of_a_done_folder_on_ray_neither_imports_nor_starts_ray(wsi_dir, tmp_path):
    """Ray (seconds to import and start) is paid only when a slide is left to do."""
    code = (
        "import sys; from clusiam_fast.tiling import TileConfig, tile_slides; "
        f"slide, out = {str(wsi_dir / CMU)!r}, {str(tmp_path / 'out')!r}; "
        "tile_slides([slide], out, TileConfig(), progress=False); "
        "again = tile_slides([slide], out, TileConfig(), engine='ray', progress=False); "
        "print(again.skipped, 'ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1].split() == ["1", "False"], done.stdout + done.stderr[-2000:]


def test_tile_workers_2_starts_the_fork_server_with_what_the_pool_preloads(wsi_dir, tmp_path):
    """The CLI starts the fork server before it imports the pipeline: with the pipeline's own preload, so that the
    workers import nothing the server could have imported once."""
    code = (
        "import sys; from multiprocessing import forkserver; from clusiam_fast import tile; "
        "from clusiam_fast.cohort import engines; "
        f"status = tile.main([{str(wsi_dir / CMU)!r}, {str(wsi_dir / 'OS-1-detail.ome.tif')!r}, "
        f"'--out', {str(tmp_path / 'out')!r}, '--workers', '2']); "
        "(pool,) = engines._POOLS; print(status, forkserver._forkserver._preload_modules == [engines.__name__, *pool[1]])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "0 True", done.stdout + done.stderr[-2000:]


def test_a_qa_picture_emptied_by_a_crash_is_named_and_its_slide_redone(wsi_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert tile_slides([wsi_dir / CMU], out, TileConfig(), progress=False).ok
    (out / "thumbnails" / "CMU-1-Small-Region.png").write_bytes(b"")  # what a crash before writeback leaves
    again = tile_slides([wsi_dir / CMU], out, TileConfig(), progress=False)
    assert again.skipped == 0 and len(again.rows) == 1
    assert "thumbnails/CMU-1-Small-Region.png is empty" in capsys.readouterr().err
    assert (out / "thumbnails" / "CMU-1-Small-Region.png").stat().st_size > 0
