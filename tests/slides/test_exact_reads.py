"""Exact reads on every level: TCGA's level 1 (downsample 2.0005) at TRIDENT's coordinates, every reader
against OpenSlide's placement (the reads CLAM and TRIDENT make); one edge fill (white) for every reader."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from clusiam_fast.formats.coords_h5 import read_coords_h5
from clusiam_fast.slides import open_slide
from clusiam_fast.slides.base import shift_subpixel

TCGA = "tcga-cr-7395-01a-01-ts1.svs"
READERS = ("cucim", "openslide", "tifffile")


def _need(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")


@pytest.fixture(scope="module")
def trident_h5(wsi_dir, tmp_path_factory):
    """TCGA tiled as TRIDENT lays it out (``--coords-format trident``): 0.5 um/px from level 1 at 0.25 um/px."""
    from clusiam_fast.tiling import TileConfig, tile_slide

    out = tmp_path_factory.mktemp("trident")
    config = TileConfig(target_mpp=0.5, slide_mpp=0.25, coords_format="trident", backend="openslide")
    row = tile_slide(wsi_dir / TCGA, out, config)
    assert (row["read_level"], row["read_size"]) == (1, 224)
    return out / row["h5_path"]


def _trident_grid(attrs) -> np.ndarray:
    """TRIDENT's own grid: steps of patch_size_level0 from the corner, all off level 1's pixel grid."""
    step = int(attrs["patch_size_level0"])
    return np.array([(x, y) for y in range(step, 3 * step + 1, step) for x in range(step, 6 * step + 1, step)])


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("backend", READERS)
def test_every_reader_places_level_1_patches_as_openslide(wsi_dir, trident_h5, backend):
    _need("openslide", backend)
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    coords, attrs = read_coords_h5(trident_h5)
    for locations in (coords[:: max(1, len(coords) // 24)][:24], _trident_grid(attrs)):
        with open_slide(wsi_dir / TCGA, "openslide") as reference, open_slide(wsi_dir / TCGA, backend) as reader:
            expected = np.stack([reference.read_region(xy, 1, 224) for xy in locations])
            batched = reader.read_patches(locations, 1, 224)
            single = np.stack([reader.read_region(xy, 1, 224) for xy in locations])
            assert any(reader.level_position(xy, 1)[2] for xy in locations)  # the case under test: off the grid
            floored = np.stack(
                [reader.read_level_box(*reader.level_position(xy, 1)[:2], 1, 224, 224) for xy in locations]
            )
        np.testing.assert_array_equal(batched, single)
        diff = _difference(batched, expected)
        # JPEG 2000 decoders and cairo's fixed-point bilinear round differently: +-3 at most, nearly all equal
        assert np.median(diff) == 0 and diff.mean() < 0.5 and diff.max() <= 3, (backend, diff.mean(), diff.max())
        if backend != "openslide":  # OpenSlide cannot read on the grid: its level-0 integers fall off it
            assert _difference(floored, expected).mean() > 5  # what flooring the position (the old read) gave
    # the training / extraction path reads the same pixels, through the chosen reader
    dataset = SlidePatchDataset([trident_h5], transform=np.asarray, slide_dir=wsi_dir, backend=backend)
    assert dataset.slides[0].backend == backend
    with open_slide(wsi_dir / TCGA, "openslide") as reference:
        for i in (0, len(coords) // 2, len(coords) - 1):
            assert _difference(dataset[i], reference.read_region(coords[i], 1, 224)).mean() < 0.5
    assert dataset.reader(0).backend == backend


@pytest.mark.parametrize("backend", READERS)
def test_edge_fill_is_white_for_every_reader(wsi_dir, backend):
    _need(backend)
    with open_slide(wsi_dir / TCGA, backend) as reader:
        w, h = reader.level_dimensions[1]
        x0, y0 = round((w - 100) * reader.level_downsamples[1]) + 1, round((h - 100) * reader.level_downsamples[1]) + 1
        region = reader.read_region((x0, y0), 1, 224)
        corner = reader.read_region((-301, -301), 1, 224)
    assert (region[140:, :] == 255).all() and (region[:, 140:] == 255).all()  # beyond the slide: white
    assert (region[:90, :90] < 255).any(-1).mean() > 0.9  # the slide itself (glass there, but scanned glass)
    assert (corner[:140, :140] == 255).all()  # before the slide: white


def test_shift_subpixel_is_bilinear_and_exact_at_zero():
    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(shift_subpixel(region, 0.0, 0.0, 8, 8), region[:8, :8])
    half = shift_subpixel(region, 0.5, 0.0, 8, 8).astype(float)
    np.testing.assert_allclose(half, (region[:8, :8].astype(float) + region[:8, 1:9]) / 2, atol=0.5 + 1e-6)


def test_bags_record_the_level_and_size_read(wsi_dir, trident_h5):
    """A TRIDENT file names no level: the bag's attributes give level 1 at 224 px, what is read, not level 0 at 448."""
    _need("openslide")
    from clusiam_fast.extraction.sources import open_source

    source = open_source(trident_h5.parent, np.asarray, slide_dir=wsi_dir, reader="openslide")
    attrs = source.slides[0].attrs
    assert (attrs["read_level"], attrs["read_size"], attrs["patch_size"]) == (1, 224, 224)
    assert attrs["level0_size"] == 448


def test_gpu_shift_matches_the_cpu_shift():
    """``read_regions_cuda``'s shift (run here on CPU tensors: the same torch code) equals ``shift_subpixel``."""
    torch = pytest.importorskip("torch")
    from clusiam_fast.slides.cucim_reader import _shift_on_gpu

    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (3, 17, 13, 3), dtype=np.uint8)
    fractions = np.array([[0.0, 0.0], [0.25, 0.0], [0.8868, 0.3103]])
    shifted = _shift_on_gpu(torch.from_numpy(batch), fractions, 12, 16).numpy()
    for region, (fx, fy), got in zip(batch, fractions, shifted):
        assert np.abs(got.astype(int) - shift_subpixel(region, fx, fy, 12, 16).astype(int)).max() <= 1
