"""Round trip: tiler outputs (and CLAM h5 files made elsewhere) -> SlidePatchDataset patches."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from clusiam_fast.data.slide_dataset import SlidePatchDataset
from clusiam_fast.slides import open_slide
from clusiam_fast.tiling import TileConfig, read_coords_h5, tile_slides, write_coords_h5

CMU = "CMU-1-Small-Region.svs"
OME = "OS-1-detail.ome.tif"


def _to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def tiled(wsi_dir, tmp_path_factory):
    """CMU and the OME-TIFF tiled with PNG tiles (lossless, so they can be compared)."""
    out = tmp_path_factory.mktemp("tiled")
    report = tile_slides([wsi_dir / CMU, wsi_dir / OME], out, TileConfig(save_tiles="png"), progress=False)
    assert report.ok, report.summary()
    return out, report


def test_manifest_round_trip(tiled, wsi_dir):
    from PIL import Image

    out, report = tiled
    dataset = SlidePatchDataset(out / "manifest.csv", return_coords=True)
    assert len(dataset) == sum(r["num_patches"] for r in report.rows)
    assert [s.slide_id for s in dataset.slides] == ["CMU-1-Small-Region", "OS-1-detail"]
    assert dataset.slides[0]["path"] == wsi_dir / CMU and dataset.slides[1].read_size == 493
    first_ome = dataset.slides[0].num_patches
    for index in (0, len(dataset) // 3, first_ome - 1, first_ome, len(dataset) - 1):
        image, (slide, x, y) = dataset[index]
        info = dataset.slides[slide]
        assert image.mode == "RGB" and image.size == (224, 224)
        assert (x, y) in {tuple(c) for c in info.coords.tolist()}
        tile = Image.open(out / "tiles" / info.slide_id / f"{info.slide_id}_{x}_{y}.png")
        np.testing.assert_array_equal(np.asarray(image), np.asarray(tile))  # on the fly == exported
    # CMU at 0.499 um/px is read at level 0 without resizing: CLAM's OpenSlide read gives the same pixels
    coords, attrs = read_coords_h5(out / "patches" / "CMU-1-Small-Region.h5")
    with open_slide(wsi_dir / CMU, "openslide") as slide:
        expected = slide.read_region(coords[5], attrs["patch_level"], attrs["patch_size"])
    np.testing.assert_array_equal(np.asarray(dataset[5][0]), expected)


def test_dataloader_workers_and_batched_reads(tiled):
    out, _ = tiled
    dataset = SlidePatchDataset(out, transform=_to_tensor)  # the folder holding manifest.csv
    indices = [len(dataset) - 1, 0, 7, 3, len(dataset) - 2]
    batch = dataset.__getitems__(indices)
    for item, index in zip(batch, indices):
        assert torch.equal(item, dataset[index])
    assert dataset._readers  # opened here...
    clone = pickle.loads(pickle.dumps(dataset))  # ...but never pickled
    assert not clone._readers and torch.equal(clone[3], dataset[3])
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, shuffle=False)
    seen = torch.cat(list(loader))
    assert seen.shape == (len(dataset), 3, 224, 224)
    assert torch.equal(seen[7], dataset[7]) and torch.equal(seen[-1], dataset[len(dataset) - 1])


def test_clam_h5_made_elsewhere(tiled, wsi_dir, tmp_path):
    out, _ = tiled
    coords, attrs = read_coords_h5(out / "patches" / "CMU-1-Small-Region.h5")
    clam_attrs = {
        k: attrs[k] for k in ("patch_size", "patch_level", "downsample", "level_dim", "downsampled_level_dim", "name")
    }
    patches = tmp_path / "RESULTS" / "patches"
    h5_path = write_coords_h5(patches / "CMU-1-Small-Region.h5", coords[:6], clam_attrs)

    with pytest.raises(FileNotFoundError, match="CMU-1-Small-Region.h5: no slide found"):
        SlidePatchDataset([h5_path])
    given = SlidePatchDataset([h5_path], slide_paths={"CMU-1-Small-Region": wsi_dir / CMU})
    searched = SlidePatchDataset(patches, slide_dir=wsi_dir)  # a folder of h5 files + where the slides are
    os.symlink(wsi_dir / CMU, tmp_path / "RESULTS" / CMU)  # the slide next to the patches folder
    beside = SlidePatchDataset(h5_path)
    reference = SlidePatchDataset(out / "manifest.csv")
    for dataset in (given, searched, beside):
        assert len(dataset) == 6 and dataset.slides[0].output_size == attrs["patch_size"]
        np.testing.assert_array_equal(np.asarray(dataset[4]), np.asarray(reference[4]))
    resized = SlidePatchDataset(h5_path, output_size=96)
    assert resized[0].size == (96, 96)


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest"):
        SlidePatchDataset(tmp_path / "nothing.csv")
    with pytest.raises(FileNotFoundError, match="neither a manifest.csv nor any .h5"):
        SlidePatchDataset(tmp_path)
