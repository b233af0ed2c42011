"""CLAM and TRIDENT coordinate files: written in either convention, read at the right field of view.

The two projects mean different things by ``patch_size`` (CLAM: px read at
``patch_level``; TRIDENT: px at the target magnification, with ``patch_size_level0``),
which only shows on a slide whose read level is not at the target: a 40x (0.25 um/px)
slide cut at 20x. The 40x slides here are a 1024 px crop of the real CMU-1-Small-Region
(0.499 um/px) upsampled 2x into an Aperio SVS that says ``MPP = 0.25`` (one level, and
with a 2x level), so a 20x patch of them must look like the same crop of CMU itself.

The files "made elsewhere" are written here with h5py and exactly the attribute sets of
CLAM (``wsi_core/WholeSlideImage.py::process_contour``) and TRIDENT
(``trident/IO.py::coords_to_h5``), not with our writer.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from clusiam_fast.formats.coords_h5 import (
    CLAM_ATTRS,
    TRIDENT_ATTRS,
    coords_format,
    read_coords_h5,
    read_patch_geometry,
)

h5py = pytest.importorskip("h5py")
tifffile = pytest.importorskip("tifffile")

CMU = "CMU-1-Small-Region.svs"
ORIGIN = (600, 900)  # the CMU crop the 40x slides are made of
COORDS = np.array([[512, 512], [1024, 256], [1400, 1500]])  # level-0 px of the 40x slides


@pytest.fixture(scope="module")
def slides40(wsi_dir, tmp_path_factory):
    """``s40.svs`` (one level) and ``s40pyr.svs`` (with a 2x level), 2048 px at 0.25 um/px; the CMU crop."""
    from clusiam_fast.slides import open_slide

    with open_slide(wsi_dir / CMU, "tifffile") as reader:
        crop = reader.read_region(ORIGIN, 0, 1024)
    big = np.asarray(Image.fromarray(crop).resize((2048, 2048), Image.BICUBIC))
    half = np.asarray(Image.fromarray(big).resize((1024, 1024), Image.BILINEAR))
    folder = tmp_path_factory.mktemp("slides40")
    desc = "Aperio Image Library v12.0.0\r\n2048x2048 [0,0 2048x2048] (256x256) JPEG Q=90|AppMag = 40|MPP = 0.25"
    for name, levels in (("s40", [big]), ("s40pyr", [big, half])):
        with tifffile.TiffWriter(folder / f"{name}.svs") as tif:
            for i, pixels in enumerate(levels):
                text = desc if i == 0 else f"Aperio Image Library v12.0.0\r\n{pixels.shape[1]}x{pixels.shape[0]}"
                tif.write(
                    pixels, tile=(256, 256), photometric="rgb", compression="jpeg", description=text, subfiletype=i
                )
    return folder, crop


def _clam_h5(path, coords, patch_size, patch_level, level_dim, downsample):
    """A coordinate file as CLAM's ``process_contour`` + ``save_hdf5`` write it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("coords", data=np.asarray(coords, np.int64))
        for key, value in {
            "patch_size": patch_size,
            "patch_level": patch_level,
            "downsample": downsample,
            "downsampled_level_dim": level_dim,
            "level_dim": level_dim,
            "name": path.stem,
            "save_path": str(path.parent),
        }.items():
            dataset.attrs[key] = value
    return path


def _trident_h5(job_dir, name, coords, patch_size, src_mag, target_mag, width, height, overlap=0):
    """A coordinate file as TRIDENT's ``coords_to_h5`` writes it (``<job>/patches/<name>_patches.h5``)."""
    path = job_dir / "patches" / f"{name}_patches.h5"
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("coords", data=np.asarray(coords, dtype=np.int32))
        dataset.attrs["patch_size"] = patch_size
        dataset.attrs["patch_size_level0"] = patch_size * src_mag // target_mag
        dataset.attrs["level0_magnification"] = src_mag
        dataset.attrs["target_magnification"] = target_mag
        dataset.attrs["overlap"] = overlap
        dataset.attrs["name"] = name
        dataset.attrs["savetodir"] = str(job_dir)
        dataset.attrs["level0_width"] = width
        dataset.attrs["level0_height"] = height
    return path


def _error(image, crop, xy) -> float:
    """Mean absolute difference between a 224 px 20x patch of a 40x slide and the CMU crop at the same place."""
    x, y = xy[0] // 2, xy[1] // 2
    reference = crop[y : y + 224, x : x + 224].astype(np.float64)
    return float(np.abs(np.asarray(image, np.float64) - reference).mean())


# -- the reader ---------------------------------------------------------------------------------


def test_convention_detection_and_geometry():
    clam = {"patch_size": 448, "patch_level": 0, "downsample": (1.0, 1.0)}
    trident = {"patch_size": 224, "patch_size_level0": 448, "level0_magnification": 40, "target_magnification": 20}
    assert coords_format(clam) == "clam" and coords_format(trident) == "trident"
    assert read_patch_geometry(clam) == read_patch_geometry(clam, (1.0, 2.0))
    geometry = read_patch_geometry(clam)
    assert (geometry.read_level, geometry.read_size, geometry.output_size, geometry.level0_size) == (0, 448, 224, 448)
    assert read_patch_geometry({**clam, "output_size": 96}).output_size == 96  # ours
    assert read_patch_geometry(clam, output_size=64).output_size == 64
    one, two = read_patch_geometry(trident), read_patch_geometry(trident, (1.0, 2.0, 4.0))
    assert (one.read_level, one.read_size, one.output_size, one.level0_size) == (0, 448, 224, 448.0)
    assert (two.read_level, two.read_size) == (1, 224)  # the 2x level, not the 4x one
    no_level0 = {k: v for k, v in trident.items() if k != "patch_size_level0"}
    assert read_patch_geometry(no_level0).level0_size == 448.0


def test_trident_files_of_40x_slides_are_read_at_their_field_of_view(slides40):
    """Was: TRIDENT's patch_size 224 read at level 0 = 56 um instead of 112, silently."""
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    folder, crop = slides40
    job = folder.parent / "trident_job" / "20x_224px_0px_overlap"
    for name in ("s40", "s40pyr"):
        _trident_h5(job, name, COORDS, 224, 40, 20, 2048, 2048)
    dataset = SlidePatchDataset(job / "patches", slide_dir=folder)
    assert [s.slide_id for s in dataset.slides] == ["s40", "s40pyr"]  # TRIDENT's _patches suffix dropped
    assert {s.coords_format for s in dataset.slides} == {"trident"}
    for k in range(len(dataset)):
        image = dataset[k]
        assert image.size == (224, 224)
        assert _error(image, crop, COORDS[k % 3]) < 10  # 112 um: the same tissue as CMU's 224 px
    one, pyramid = dataset.slides
    assert (one.read_level, one.read_size) == (0, 448)  # 448 level-0 px resized to 224
    assert (pyramid.read_level, pyramid.read_size) == (1, 224)  # the 2x level read directly
    with h5py.File(job / "patches" / "s40_patches.h5") as f:  # what the old reading took: 224 level-0 px
        half = f["coords"].attrs["patch_size"]
    from clusiam_fast.slides import open_slide

    with open_slide(folder / "s40.svs") as reader:
        assert _error(reader.read_region(COORDS[0], 0, half), crop, COORDS[0]) > 30


def test_clam_files_of_40x_slides_read_their_region_resized_to_224(slides40):
    """Was: CLAM's patch_size 448 at level 0 came out as 448 px patches unless output_size was given."""
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    folder, crop = slides40
    results = folder.parent / "clam_results" / "patches"
    _clam_h5(results / "s40.h5", COORDS, 448, 0, (2048, 2048), (1.0, 1.0))
    _clam_h5(results / "s40pyr.h5", COORDS, 224, 1, (1024, 1024), (2.0, 2.0))  # CLAM at its patch_level 1
    dataset = SlidePatchDataset(results, slide_dir=folder)
    assert [(s.read_level, s.read_size, s.output_size) for s in dataset.slides] == [(0, 448, 224), (1, 224, 224)]
    for k in range(len(dataset)):
        assert dataset[k].size == (224, 224) and _error(dataset[k], crop, COORDS[k % 3]) < 10
    assert SlidePatchDataset(results / "s40.h5", slide_dir=folder, output_size=448)[0].size == (448, 448)


# -- the writer ---------------------------------------------------------------------------------


def test_tiler_writes_clam_by_default_and_trident_on_request(slides40, tmp_path):
    from clusiam_fast.data.slide_dataset import SlidePatchDataset
    from clusiam_fast.tile import main

    folder, _ = slides40
    slide = str(folder / "s40.svs")
    assert main([slide, "--out", str(tmp_path / "clam"), "--workers", "1", "--min-tissue", "0.2"]) == 0
    assert (
        main(
            [
                slide,
                "--out",
                str(tmp_path / "tri"),
                "--workers",
                "1",
                "--min-tissue",
                "0.2",
                "--coords-format",
                "trident",
            ]
        )
        == 0
    )
    clam_coords, clam = read_coords_h5(tmp_path / "clam" / "patches" / "s40.h5")
    tri_coords, tri = read_coords_h5(tmp_path / "tri" / "patches" / "s40_patches.h5")  # TRIDENT's file name
    np.testing.assert_array_equal(clam_coords, tri_coords)
    assert set(CLAM_ATTRS) | {"save_path"} <= set(clam) and "patch_size_level0" not in clam
    assert set(TRIDENT_ATTRS) <= set(tri) and "patch_level" not in tri
    assert (clam["coords_format"], clam["patch_size"], clam["patch_level"], clam["output_size"]) == (
        "clam",
        448,
        0,
        224,
    )
    assert (tri["coords_format"], tri["patch_size"], tri["patch_size_level0"]) == ("trident", 224, 448)
    assert (tri["level0_magnification"], tri["target_magnification"], tri["overlap"]) == (40, 20, 0)
    assert (tri["level0_width"], tri["level0_height"], tri["name"]) == (2048, 2048, "s40")
    # TRIDENT's WSIPatcher reads round(patch_size * level0_magnification / target_magnification) level-0 px
    assert round(tri["patch_size"] * tri["level0_magnification"] / tri["target_magnification"]) == 448
    # the same patches whichever file (or the manifest) they are read from
    by_manifest = SlidePatchDataset(tmp_path / "clam")
    by_clam = SlidePatchDataset(tmp_path / "clam" / "patches", slide_dir=folder)
    by_trident = SlidePatchDataset(tmp_path / "tri" / "patches", slide_dir=folder)
    for k in (0, len(by_manifest) // 2, len(by_manifest) - 1):
        reference = np.asarray(by_manifest[k])
        assert reference.shape == (224, 224, 3)
        np.testing.assert_array_equal(np.asarray(by_clam[k]), reference)
        np.testing.assert_array_equal(np.asarray(by_trident[k]), reference)
    with pytest.raises(ValueError, match="coords-format"):
        from clusiam_fast.tiling import TileConfig

        TileConfig(coords_format="both")


# -- extract --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A seeded random ResNet-18 state_dict (no fc), as ``--export-backbone`` writes it."""
    import torch
    import torchvision

    path = tmp_path_factory.mktemp("backbone") / "backbone.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    return path


STATS = ["--mean", "0.7", "0.55", "0.7", "--std", "0.15", "0.2", "0.15", "--workers", "0", "--quiet"]


def test_extract_on_mixed_patch_sizes_resizes_to_one(slides40, wsi_dir, backbone, tmp_path, one_thread):
    """A CLAM file (224 px out) and a TRIDENT file (256 px out) in one folder: was `stack expects each tensor...`."""
    from clusiam_fast.extraction.pipeline import extract
    from clusiam_fast.formats.feature_bags import load_bags

    folder, _ = slides40
    data = tmp_path / "coords"
    _clam_h5(data / "CMU-1-Small-Region.h5", [[448, 448], [672, 448]], 224, 0, (2220, 2967), (1.0, 1.0))
    _trident_h5(tmp_path, "s40", COORDS, 256, 40, 20, 2048, 2048)  # into tmp_path/patches
    (tmp_path / "patches" / "s40_patches.h5").rename(data / "s40_patches.h5")
    slides = tmp_path / "slides"  # both slides in one --slide-dir
    slides.mkdir()
    (slides / "s40.svs").symlink_to(folder / "s40.svs")
    (slides / CMU).symlink_to(wsi_dir / CMU)
    with pytest.warns(UserWarning, match="patches come in 2 sizes"):
        summary = extract(
            backbone,
            data,
            tmp_path / "feats",
            batch_size=8,
            workers=0,
            mean=(0.7, 0.55, 0.7),
            std=(0.15, 0.2, 0.15),
            progress=False,
            slide_dir=slides,
        )
    assert summary["source"] == "coords" and summary["fit_size"] == 224
    assert set(summary["patch_sizes"]) == {"224x224", "256x256"} and summary["num_failed_patches"] == 0
    bags = {bag.slide_id: bag for bag in load_bags(tmp_path / "feats")}
    assert set(bags) == {"CMU-1-Small-Region", "s40"}
    assert bags["s40"].features.shape == (3, 512) and bags["CMU-1-Small-Region"].features.shape == (2, 512)
    np.testing.assert_array_equal(bags["s40"].coords, COORDS)
    assert bags["s40"].attrs["coords_format"] == "trident" and bags["s40"].attrs["level0_size"] == 512


def test_extract_on_a_clam_results_folder_uses_its_patches_and_the_slides(
    slides40, wsi_dir, backbone, tmp_path, capsys, one_thread
):
    """Was: exit 0 with one bag made of the mask JPEGs."""
    from clusiam_fast.extract import main
    from clusiam_fast.formats.feature_bags import load_bags

    folder, _ = slides40
    results = tmp_path / "RESULTS"
    _clam_h5(results / "patches" / "s40.h5", COORDS[:2], 448, 0, (2048, 2048), (1.0, 1.0))
    for sub in ("masks", "stitches"):
        (results / sub).mkdir()
        Image.new("RGB", (300, 200), (200, 120, 200)).save(results / sub / "s40.jpg")
    with open(results / "process_list_autogen.csv", "w", newline="") as f:
        csv.writer(f).writerows([["slide_id", "process", "status"], ["s40.svs", 0, "processed"]])

    assert main([str(backbone), str(results), "--out", str(tmp_path / "none"), *STATS]) == 2
    error = capsys.readouterr().err
    assert "--slide-dir" in error and "RESULTS/patches" in error and "s40" in error

    assert (
        main([str(backbone), str(results), "--out", str(tmp_path / "feats"), "--slide-dir", str(folder), *STATS]) == 0
    )
    bags = load_bags(tmp_path / "feats")
    assert [bag.slide_id for bag in bags] == ["s40"]
    assert bags[0].features.shape == (2, 512) and bags[0].attrs["read_size"] == 448
    assert bags[0].attrs["source"] == "coords" and bags[0].attrs["patch_size"] == 224


def test_results_folders_resolve_to_their_coordinate_files(tmp_path):
    from clusiam_fast.data.resolve import resolve_data

    clam = tmp_path / "RESULTS"
    _clam_h5(clam / "patches" / "a.h5", COORDS, 256, 0, (2048, 2048), (1.0, 1.0))
    (clam / "masks").mkdir()
    Image.new("RGB", (64, 48)).save(clam / "masks" / "a.jpg")
    arg = resolve_data(clam)
    assert (arg.kind, arg.path, arg.files) == ("coords", clam / "patches", (clam / "patches" / "a.h5",))
    job = tmp_path / "job"  # TRIDENT: job/<coords folder>/patches/<name>_patches.h5
    _trident_h5(job / "20x_256px_0px_overlap", "a", COORDS, 256, 40, 20, 2048, 2048)
    (job / "thumbnails").mkdir()
    Image.new("RGB", (64, 48)).save(job / "thumbnails" / "a.jpg")
    assert resolve_data(job).files == (job / "20x_256px_0px_overlap" / "patches" / "a_patches.h5",)
    _trident_h5(job / "10x_256px_0px_overlap", "a", COORDS, 256, 40, 10, 2048, 2048)
    with pytest.raises(ValueError, match="several coordinate folders .*10x_256px_0px_overlap.*; pass one of them"):
        resolve_data(job)


def test_extract_leaves_out_patches_off_the_slide_and_fails_a_slide_with_none_left(
    wsi_dir, backbone, tmp_path, capsys, one_thread
):
    """Was: exit 0, bags of white padding. Rule: at most half a patch outside level 0 (the centre on the slide)."""
    import json

    from clusiam_fast.extract import main
    from clusiam_fast.formats.feature_bags import load_bags

    data, slides = tmp_path / "coords", tmp_path / "slides"
    slides.mkdir()
    for name in ("offslide", "mixed"):  # both are CMU (2220 x 2967 px at level 0)
        (slides / f"{name}.svs").symlink_to(wsi_dir / CMU)
    _clam_h5(data / "offslide.h5", [[50000, 50000], [-500, -500]], 224, 0, (2220, 2967), (1.0, 1.0))
    # centre at x = 0 is kept (half the patch off), one px further is not
    mixed = [[448, 448], [50000, 50000], [672, 448], [-112, 100], [-113, 100], [2220 - 112, 2967 - 112]]
    _clam_h5(data / "mixed.h5", mixed, 224, 0, (2220, 2967), (1.0, 1.0))
    out = tmp_path / "feats"
    assert main([str(backbone), str(data), "--out", str(out), "--slide-dir", str(slides), *STATS]) == 1
    err = capsys.readouterr().err
    assert "FAILED offslide: all 2 patches failed" in err and "outside the slide" in err
    assert "mixed: left out 2 patch(es) whose field of view lies outside the slide" in err
    bags = load_bags(out)
    assert [bag.slide_id for bag in bags] == ["mixed"]
    np.testing.assert_array_equal(bags[0].coords, [[448, 448], [672, 448], [-112, 100], [2108, 2855]])
    summary = json.loads((out / "extract.json").read_text())
    assert summary["num_off_slide_patches"] == 2 and summary["off_slide_patches"] == {"mixed": 2}
    named = [f["patch"] for f in summary["failed_patches"]["mixed"]]
    assert named == ["mixed@50000,50000", "mixed@-113,100"]
    assert [f["slide_id"] for f in summary["failed_slides"]] == ["offslide"]
    assert "(2220 x 2967 px at level 0)" in summary["failed_slides"][0]["reason"]
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["off_slide_patches"] == {"mixed": 2} and list(cohort["failed"]) == ["offslide"]
    assert "outside the slide" in cohort["failed"]["offslide"]["reason"]


def _h5_with(path, coords, **attrs):
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("coords", data=coords)
        for key, value in attrs.items():
            dataset.attrs[key] = value
    return path


@pytest.mark.parametrize(
    "coords,message",
    [
        (np.arange(30).reshape(10, 3), r"shape \(10, 3\)"),  # was read as 15 (x, y) pairs
        (np.arange(20), r"shape \(20,\)"),
        (np.arange(8).reshape(2, 2, 2), r"shape \(2, 2, 2\)"),
        (np.array([[10.5, 20.0]]), "holds 10.5"),
        (np.array([[np.nan, 20.0]]), "holds nan"),
    ],
)
def test_coords_of_another_shape_or_not_whole_numbers_are_refused(tmp_path, capsys, coords, message):
    """Only (N, 2) integer-valued coords are read; the error names the file, the dataset and its shape."""
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    path = _h5_with(tmp_path / "odd.h5", coords, patch_size=224, patch_level=0)
    with pytest.raises(ValueError, match=rf"odd.h5: dataset 'coords' .*{message}"):
        read_coords_h5(path)
    with pytest.raises(ValueError, match="odd.h5: dataset 'coords'"):  # what train and extract open
        SlidePatchDataset(path)
    np.testing.assert_array_equal(
        read_coords_h5(_h5_with(tmp_path / "f.h5", [[1.0, 2.0]], patch_size=224))[0], [[1, 2]]
    )


@pytest.mark.parametrize(
    "attrs,bad",
    [
        ({"patch_size": "abc"}, "patch_size"),
        ({"patch_size": 0}, "patch_size"),
        ({"patch_size": 224.5}, "patch_size"),
        ({"patch_size": 224, "patch_level": -1}, "patch_level"),
        ({"patch_size": 224, "downsample": (0.0, 0.0)}, "downsample"),
        ({"patch_size": 224, "level0_magnification": 40, "target_magnification": 0}, "target_magnification"),
        ({"patch_size": 224, "patch_size_level0": -448}, "patch_size_level0"),
    ],
)
def test_unusable_geometry_attributes_name_the_file_and_attribute(tmp_path, attrs, bad):
    """Were: ValueError without the file (int('abc')), ZeroDivisionError (target_magnification 0), or silent."""
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    path = _h5_with(tmp_path / "attrs.h5", np.array([[0, 0]]), **attrs)
    with pytest.raises(ValueError, match=rf"attrs.h5: attribute '{bad}' of 'coords' is "):
        SlidePatchDataset(path, slide_paths=[tmp_path / "attrs.h5"])
