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


def _mixed_manifest(tiled, folder, cmu_patches: int):
    """The tiled manifest with only the first ``cmu_patches`` CMU patches (cuCIM) and all 4 OME ones (tifffile)."""
    from clusiam_fast.formats.manifest import read_manifest, write_manifest

    out, _ = tiled
    folder.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(out / "manifest.csv")
    for row in rows:
        coords, attrs = read_coords_h5(row["h5_path"])
        keep = coords[:cmu_patches] if row["slide_id"] == "CMU-1-Small-Region" else coords
        row["h5_path"] = write_coords_h5(folder / f"{row['slide_id']}.h5", keep, attrs).name
        row["num_patches"] = len(keep)
    return write_manifest(folder / "manifest.csv", rows)


def test_torch_loader_batches_with_1_2_and_many_patches_of_a_slide(tiled):
    """The trainer's DataLoader path on a mixed-slide manifest: batches holding 1, 2 or many patches of a slide."""
    from torch.utils.data import DataLoader

    from clusiam_fast.data.augment import TwoViews, paper_augmentation
    from clusiam_fast.training.loader import TwoViewDataset, collate_views

    out, _ = tiled
    dataset = SlidePatchDataset(out / "manifest.csv")
    assert [s.backend for s in dataset.slides] == ["cucim", "tifffile"]
    cmu, ome = dataset.slides[0].num_patches, dataset.slides[1].num_patches
    assert cmu >= 12 and ome >= 3
    cmu_ids, ome_ids = list(range(cmu)), list(range(cmu, cmu + ome))
    batches = [
        cmu_ids[:1] + ome_ids,  # one cuCIM patch (crashed the trainer), many tifffile ones
        cmu_ids[5:7] + ome_ids[:1],  # two and one
        cmu_ids[:12] + ome_ids[:2],  # many and two
    ]
    views = TwoViewDataset(dataset, TwoViews(paper_augmentation(32, (0.5,) * 3, (0.25,) * 3)))
    loader = DataLoader(views, batch_sampler=[[(i, 1000 + i) for i in b] for b in batches], collate_fn=collate_views)
    for (v1, v2, skipped), indices in zip(loader, batches, strict=True):
        assert v1.shape == v2.shape == (len(indices), 3, 32, 32) and skipped == []
        for k, i in enumerate(indices):  # the batched read gives what each patch read alone gives
            one1, one2, _ = views[(i, 1000 + i)]
            assert torch.equal(v1[k], one1) and torch.equal(v2[k], one2)


@pytest.mark.parametrize("cmu_patches", [1, 2, 12])
def test_dali_loader_batches_with_1_2_and_many_patches_of_a_slide(tiled, tmp_path, cmu_patches):
    """The DALI path (CPU, device_id=None) on a mixed-slide manifest; every batch holds ``cmu_patches`` CMU ones."""
    pytest.importorskip("nvidia.dali")
    from clusiam_fast.data.augment import Recipe
    from clusiam_fast.data.dali import build_dali_loader
    from clusiam_fast.data.dali_sources import epoch_plan

    manifest = _mixed_manifest(tiled, tmp_path / "mixed", cmu_patches)
    size = cmu_patches + 4
    no_aug = Recipe(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=0.0, p_flip=0.0)
    loader = build_dali_loader(
        manifest, batch_size=size, crop_size=224, mean=(0, 0, 0), std=(1 / 255,) * 3, recipe=no_aug, py_workers=1
    )
    assert loader.device_id is None and len(loader) == 1
    ((v1, v2),) = list(loader)
    assert v1.shape == (size, 3, 224, 224)
    dataset = SlidePatchDataset(manifest, transform=_to_tensor)
    order = epoch_plan(size, seed=0, epoch=0, shard_id=0, num_shards=1)
    expected = torch.stack([dataset[int(i)] for i in order]).float()
    for view in (v1, v2):
        assert (view - expected).abs().max() <= 1.0  # pixels of the right patches (up to resize rounding)
