"""Slide readers on the real slides of ../shared/data/wsi: mpp, backends, pixels, bad files."""

from __future__ import annotations

import importlib.util
import pickle
import shutil

import numpy as np
import pytest

from clusiam_fast.slides import MissingMppError, SlideError, open_slide, slide_id_from_path
from clusiam_fast.slides.mpp import aperio_mpp, ome_mpp, resolution_tag_mpp

CMU = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
OME = "OS-1-detail.ome.tif"


def _need(module: str) -> None:
    """Skip unless installed; not imported here (the readers import cuCIM quietly themselves)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


def test_mpp_parsers_read_units_and_reject_defaults():
    assert aperio_mpp("Aperio Image Library v11\r\n|AppMag = 20|MPP = 0.2525|x = 1").x == pytest.approx(0.2525)
    assert aperio_mpp("some other description MPP = 0.5") is None
    xml = '<OME><Image><Pixels PhysicalSizeX="250" PhysicalSizeXUnit="nm" PhysicalSizeY="0.25"/></Image></OME>'
    info = ome_mpp(xml)
    assert info.x == pytest.approx(0.25) and info.y == pytest.approx(0.25)
    assert resolution_tag_mpp((40000, 1), (40000, 1), 3).x == pytest.approx(0.25)  # 40000 px/cm
    assert resolution_tag_mpp(72, 72, 2) is None  # the 72-dpi default is not a microscope
    assert resolution_tag_mpp(40000, 40000, 1) is None  # no unit


def test_cmu_svs_mpp_from_metadata_not_cucim_spacing(wsi_dir):
    _need("cucim")
    with open_slide(wsi_dir / CMU) as slide:
        assert slide.backend == "cucim"
        assert slide.mpp == pytest.approx(0.499, abs=1e-4)
        assert slide.dimensions == (2220, 2967)
        assert slide._image.spacing()[0] == 1.0  # what we refuse to trust
    for backend in ("openslide", "tifffile"):
        with open_slide(wsi_dir / CMU, backend) as slide:
            assert slide.mpp == pytest.approx(0.499, abs=1e-4), backend


def test_ome_tiff_mpp_and_auto_backend(wsi_dir):
    with open_slide(wsi_dir / OME) as slide:
        assert slide.backend == "tifffile"
        assert slide.mpp == pytest.approx(0.227, abs=1e-3)
        assert slide.dimensions == (1101, 1101)
        assert slide_id_from_path(slide.path) == "OS-1-detail"


def test_openslide_cannot_open_ome_and_says_so(wsi_dir):
    _need("openslide")
    with pytest.raises(SlideError, match="OS-1-detail.ome.tif"):
        open_slide(wsi_dir / OME, "openslide")


def test_cucim_refused_where_it_decodes_colours_wrong(wsi_dir):
    _need("cucim")
    with pytest.raises(SlideError, match="tifffile"):
        open_slide(wsi_dir / OME, "cucim")


def test_missing_mpp_is_a_clear_error_unless_given(wsi_dir):
    with open_slide(wsi_dir / TCGA) as slide:
        assert slide.mpp is None
        with pytest.raises(MissingMppError, match=TCGA) as error:
            slide.require_mpp()
        assert "--slide-mpp" in str(error.value)
    with open_slide(wsi_dir / TCGA, slide_mpp=0.25) as slide:
        assert slide.require_mpp() == 0.25 and slide.mpp_info.source == "--slide-mpp"
    with open_slide(wsi_dir / CMU, slide_mpp=0.25) as slide:  # metadata wins
        assert slide.mpp == pytest.approx(0.499, abs=1e-4)


def _nearly_equal(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to JPEG 2000 decoder rounding (OpenJPEG vs cuCIM's): +-1 on a few values (a few more once a
    sub-pixel shift spreads each over up to four output pixels)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 4e-3


@pytest.mark.parametrize("name", [CMU, TCGA])
def test_cucim_openslide_tifffile_read_identical_pixels(wsi_dir, name):
    _need("cucim")
    _need("openslide")
    readers = [open_slide(wsi_dir / name, b) for b in ("cucim", "openslide", "tifffile")]
    try:
        w, h = readers[0].dimensions
        for x, y in [(w // 2, h // 2), (w // 3 + 7, h // 2 - 101), (w // 2 + 13, h // 3), (w // 4 - 3, h // 2 + 5)]:
            regions = [r.read_region((x, y), 0, (300, 257)) for r in readers]
            assert regions[0].shape == (257, 300, 3) and regions[0].dtype == np.uint8
            assert regions[0].std() > 10  # tissue, not padding
            np.testing.assert_array_equal(regions[1], regions[2])  # OpenSlide == tifffile
            if name == CMU:  # JPEG tiles: cuCIM == OpenSlide, exactly
                np.testing.assert_array_equal(regions[0], regions[1])
            else:  # JPEG 2000: cuCIM's decoder rounds 11 of 47 M values differently
                _nearly_equal(regions[0], regions[1])
        if readers[0].level_count > 1:  # cuCIM and tifffile agree at a lower level too
            a = readers[0].read_region((2002, 1001), 1, 200)
            _nearly_equal(a, readers[2].read_region((2002, 1001), 1, 200))
    finally:
        for r in readers:
            r.close()


def test_batched_reads_equal_single_reads_and_pad_white(wsi_dir):
    _need("cucim")
    for backend in ("cucim", "openslide", "tifffile"):
        with open_slide(wsi_dir / CMU, backend) as slide:
            w, h = slide.dimensions
            locations = [(0, 0), (1000, 1200), (w - 100, 5), (-30, h - 50), (448, 672)]
            batches = list(slide.read_regions(locations, 0, 224, num_workers=2, batch_size=2))
            assert [len(b) for b in batches] == [2, 2, 1]
            patches = np.concatenate(batches)
            for patch, xy in zip(patches, locations):
                np.testing.assert_array_equal(patch, slide.read_region(xy, 0, 224))
            # outside the image is white, inside is the slide
            assert (patches[2][:, 100:] == 255).all() and (patches[3][:50, :30] == 255).all()
            inside = slide.read_patches([(1000, 1200), (448, 672)], 0, 224, num_workers=2)
            np.testing.assert_array_equal(inside, patches[[1, 4]])


def test_thumbnail_covers_the_slide(wsi_dir):
    with open_slide(wsi_dir / TCGA) as slide:
        image, (dsx, dsy) = slide.thumbnail(16)
        w, h = slide.dimensions
        assert image.shape == (round(h / 16), round(w / 16), 3)
        assert dsx == pytest.approx(16, rel=0.01) and dsy == pytest.approx(16, rel=0.01)
        direct = slide.read_region((0, 0), 1, slide.level_dimensions[1])
        small = direct[::8, ::8].astype(float)  # level 1 is 2x: 8 more gives ~16x
        assert abs(small.mean() - image.mean()) < 3


def test_readers_do_not_pickle(wsi_dir):
    with open_slide(wsi_dir / OME) as slide:
        with pytest.raises(TypeError, match="open a reader in each process"):
            pickle.dumps(slide)


def test_truncated_unknown_and_missing_files_fail_by_name(wsi_dir, tmp_path):
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes((wsi_dir / CMU).read_bytes()[:300_000])
    with pytest.raises(SlideError, match="truncated.svs"):
        open_slide(truncated)
    text = tmp_path / "notes.svs"
    text.write_text("not a slide\n")
    with pytest.raises(SlideError, match="notes.svs.*unknown, unsupported or corrupt"):
        open_slide(text)
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "absent.svs")
    # an OME-TIFF cut short opens (header first) but fails on reading, by name
    cut = tmp_path / "cut.ome.tif"
    shutil.copyfile(wsi_dir / OME, cut)
    with open(cut, "r+b") as f:
        f.truncate(150_000)
    with open_slide(cut) as slide:
        with pytest.raises(SlideError, match="cut.ome.tif"):
            slide.read_region((0, 0), 0, slide.dimensions)


@pytest.mark.parametrize("name,level,mpp", [(CMU, 0, None), (TCGA, 1, 0.25)])
def test_cucim_tile_shared_batches_equal_single_reads(wsi_dir, name, level, mpp):
    """Grid neighbours are cut from shared tiles; scattered patches are read directly."""
    _need("cucim")
    from clusiam_fast.tiling import grid_coords, plan_read

    with open_slide(wsi_dir / name, "cucim", slide_mpp=mpp) as slide, open_slide(wsi_dir / name, "tifffile") as ref:
        plan = plan_read(slide.level_downsamples, slide.mpp, 0.5, 224)
        assert plan.level == level
        grid = grid_coords(plan, slide.level_dimensions)
        scattered = grid[:: max(1, len(grid) // 5)][:5] + 37
        for locations in (grid[:20], scattered):
            patches = slide.read_patches(locations, level, plan.read_size, num_workers=2, batch_size=16)
            for patch, xy in zip(patches, locations):
                np.testing.assert_array_equal(patch, slide.read_region(xy, level, plan.read_size))
                _nearly_equal(patch, ref.read_region(xy, level, plan.read_size))


@pytest.mark.parametrize("name,backend", [(CMU, "cucim"), (CMU, "openslide"), (CMU, "tifffile"), (OME, "tifffile")])
def test_every_reader_returns_n_regions_for_1_2_and_many(wsi_dir, name, backend):
    """read_regions / read_patches give (N, h, w, 3) for N = 1 too (cuCIM gave (h, w, 3): issue 19)."""
    _need(backend)
    with open_slide(wsi_dir / name, backend) as slide:
        w, h = slide.dimensions
        inside = [(w // 2 + 32 * k, h // 2) for k in range(7)]  # 32-px neighbours share tiles (cuCIM cuts them)
        for size in (224, 32):
            for n in (1, 2, 7):
                for locations in (inside[:n], [(w - 10, h - 10)] + inside[: n - 1]):  # inside / over the border
                    batches = list(slide.read_regions(locations, 0, size, num_workers=2, batch_size=n))
                    assert [b.shape for b in batches] == [(n, size, size, 3)], (size, locations)
                    patches = slide.read_patches(locations, 0, size, num_workers=2)
                    assert patches.shape == (n, size, size, 3) and patches.dtype == np.uint8
                    for patch, xy in zip(patches, locations):
                        np.testing.assert_array_equal(patch, slide.read_region(xy, 0, size))


def test_a_header_claiming_a_huge_image_fails_by_name(tmp_path):
    """A 512 px tiled TIFF whose header was edited to say 60000 x 60000 px (was IndexError: tuple index out of range)."""
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "huge.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, pixels, tile=(256, 256), photometric="rgb", compression="jpeg", resolution=(20000, 20000))
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(60000)
        tif.pages[0].tags["ImageLength"].overwrite(60000)
    backends = ["auto"] + [b for b in ("cucim", "openslide", "tifffile") if importlib.util.find_spec(b)]
    for backend in backends:
        with pytest.raises(SlideError, match=r"huge.tif: .*60000 x 60000 px, which takes 55225 tiles.* lists 4"):
            open_slide(path, backend)
    from clusiam_fast.tiling import TileConfig, tile_slides

    report = tile_slides([path], tmp_path / "out", TileConfig(), progress=False)
    assert [f.path.name for f in report.failures] == ["huge.tif"] and "60000 x 60000" in report.failures[0].error


def test_tifffile_reader_picks_the_jpeg_colour_space_before_threads_read(wsi_dir):
    """tifffile reads the file to choose the JPEG colour space (is_jfif) on first use of page.decode,
    outside the reader's file lock: a threaded first read raced it and decoded the OME-TIFF's YCbCr
    tiles as RGB (cuCIM's wrong colours), for the reader's whole life. Seen in the DALI slide workers."""
    from clusiam_fast.slides.tifffile_reader import TiffFileReader

    locations = [(0, 0), (493, 0), (0, 493), (493, 493)]
    with TiffFileReader(wsi_dir / OME) as reference:
        assert all("decode" in page.__dict__ for page in reference._pages)  # chosen at open, single-threaded
        expected = np.stack([reference.read_region(xy, 0, 493) for xy in locations])
    for _ in range(10):  # fresh readers, first reads in threads
        with TiffFileReader(wsi_dir / OME) as slide:
            np.testing.assert_array_equal(slide.read_patches(locations, 0, 493, num_workers=4, batch_size=4), expected)
