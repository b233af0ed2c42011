"""The DALI loader's contract (CPU mode): tensors, determinism, sharding, bad files, sources."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from clusiam_fast.data.augment import Recipe, paper_augmentation  # noqa: E402
from clusiam_fast.data.dali import build_dali_loader  # noqa: E402
from clusiam_fast.data.dali_sources import epoch_plan, substitute  # noqa: E402
from clusiam_fast.data.patch_folder import load_rgb  # noqa: E402

MEAN, STD = (0.70, 0.54, 0.69), (0.22, 0.27, 0.20)
NO_AUG = Recipe(scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=0.0, p_flip=0.0)
# Keeps a solid-colour image's colour: any crop, flip and blur of a constant is the constant.
COLOUR_KEPT = Recipe(p_jitter=0.0, p_gray=0.0)


@pytest.fixture(scope="module")
def pcam_files(pcam_dir) -> list[str]:
    files = sorted(str(p) for p in (pcam_dir / "train").glob("*/*.jpg"))
    if len(files) < 64:
        pytest.skip("too few PCam patches")
    return files[:: len(files) // 64][:64]


def solid_images(folder: Path, n: int) -> list[str]:
    """``n`` 24-px PNGs, image ``i`` filled with colour (i, 255 - i, 7): the colour names the image."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"solid_{i:03d}.png"
        Image.fromarray(np.full((24, 24, 3), (i, 255 - i, 7), np.uint8)).save(path)
        paths.append(str(path))
    return paths


def identities(views: torch.Tensor) -> list[int]:
    """Which solid image each view came from (mean=0, std=1/255 loaders: values are pixels)."""
    red = views[:, 0].flatten(1)
    assert torch.all(red.amax(1) == red.amin(1)), "a solid image stayed solid"
    return [int(round(v)) for v in red[:, 0].tolist()]


def epoch_ids(loader) -> list[int]:
    return [i for v1, _ in loader for i in identities(v1)]


def test_shapes_dtypes_layout_and_normalisation(pcam_files):
    """NCHW, float32/float16, finite, contiguous; without augmentation equal to torchvision's tensor."""
    for dtype, atol in ((torch.float32, 1e-5), (torch.float16, 2e-2)):
        loader = build_dali_loader(
            pcam_files[:16], batch_size=8, crop_size=96, mean=MEAN, std=STD, recipe=NO_AUG, dtype=dtype
        )
        assert len(loader) == 2
        batches = list(loader)
        assert len(batches) == 2
        v1, v2 = batches[0]
        assert v1.shape == v2.shape == (8, 3, 96, 96) and v1.dtype == dtype and v1.is_contiguous()
        assert v1.device.type == "cpu" and torch.isfinite(v1).all()
        # Identity crop (full 96-px image at 96 px), no colour, blur or flip: DALI's tensor is
        # the decoded image normalised, exactly what torchvision's ToTensor + Normalize give
        # (same libjpeg-turbo decode; up to float16 rounding for float16 outputs).
        order = epoch_plan(16, seed=0, epoch=0, shard_id=0, num_shards=1)[:8]
        reference = torch.stack([paper_augmentation(96, MEAN, STD, NO_AUG)(load_rgb(pcam_files[i])) for i in order])
        torch.testing.assert_close(v1.float(), reference, atol=atol, rtol=0)
        torch.testing.assert_close(v2.float(), reference, atol=atol, rtol=0)


def test_two_views_of_a_patch_differ(pcam_files):
    loader = build_dali_loader(pcam_files[:32], batch_size=16, crop_size=48, mean=MEAN, std=STD, seed=3)
    for v1, v2 in loader:
        per_sample = (v1 - v2).abs().flatten(1).amax(1)
        assert torch.all(per_sample > 0.05), "each pair of views must differ"


def test_same_seed_same_batches_other_seed_or_epoch_different(pcam_files):
    def run(seed: int, epoch: int) -> list[torch.Tensor]:
        loader = build_dali_loader(
            pcam_files[:32], batch_size=16, crop_size=32, mean=MEAN, std=STD, seed=seed, num_threads=2
        )
        loader.set_epoch(epoch)
        return [torch.cat([v1, v2]) for v1, v2 in loader]

    first, again = run(0, 0), run(0, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], run(1, 0)[0])
    assert not torch.equal(first[0], run(0, 1)[0])
    # Thread count does not change the result (per-sample random streams).
    loader = build_dali_loader(pcam_files[:32], batch_size=16, crop_size=32, mean=MEAN, std=STD, seed=0, num_threads=1)
    assert all(torch.equal(torch.cat([v1, v2]), a) for (v1, v2), a in zip(loader, first, strict=True))


def test_epochs_visit_every_image_once_in_a_new_order(tmp_path):
    paths = solid_images(tmp_path / "solid", 40)
    loader = build_dali_loader(
        paths, batch_size=8, crop_size=16, mean=(0, 0, 0), std=(1 / 255,) * 3, recipe=COLOUR_KEPT
    )
    epoch0, epoch1 = epoch_ids(loader), epoch_ids(loader)  # iterating again runs the next epoch
    assert sorted(epoch0) == sorted(epoch1) == list(range(40))
    assert epoch0 != epoch1


def test_shards_split_the_data_evenly(tmp_path):
    """Ranks get disjoint, equally long shares; batches per epoch agree across ranks (41 images)."""
    paths = solid_images(tmp_path / "solid", 41)
    ranks = [
        build_dali_loader(
            paths,
            batch_size=4,
            crop_size=16,
            mean=(0, 0, 0),
            std=(1 / 255,) * 3,
            recipe=COLOUR_KEPT,
            shard_id=r,
            num_shards=2,
            seed=5,
        )
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 20 // 4
    for _epoch in range(2):
        seen = [epoch_ids(loader) for loader in ranks]
        assert len(seen[0]) == len(seen[1]) == 20
        assert not set(seen[0]) & set(seen[1])
        assert len(set(seen[0]) | set(seen[1])) == 40
    # drop_last=False keeps the rank's last partial batch: 20 = 3 x 6 + 2.
    loader = build_dali_loader(
        paths,
        batch_size=6,
        crop_size=16,
        mean=(0, 0, 0),
        std=(1 / 255,) * 3,
        recipe=COLOUR_KEPT,
        shard_id=1,
        num_shards=2,
        drop_last=False,
    )
    sizes = [len(v1) for v1, _ in loader]
    assert len(loader) == 4 and sizes == [6, 6, 6, 2]


def test_undecodable_images_are_reported_skipped_and_counted(tmp_path, pcam_files, caplog):
    good = pcam_files[:30]
    data = Path(good[0]).read_bytes()
    bad = {
        "text.jpg": b"not an image at all\n",
        "empty.jpg": b"",
        "truncated.jpg": data[: len(data) // 2],  # no end-of-image marker: caught by the header check
    }
    # Valid start and end, broken Huffman table: passes the header check, fails in DALI's decoder.
    broken = bytearray(data)
    dht = broken.find(b"\xff\xc4")
    broken[dht : dht + 200] = b"\x13" * 200
    bad["huffman.jpg"] = bytes(broken)
    bad_paths = []
    for name, payload in bad.items():
        (tmp_path / name).write_bytes(payload)
        bad_paths.append(str(tmp_path / name))
    files = good[:15] + bad_paths + good[15:]
    with caplog.at_level(logging.WARNING, logger="clusiam_fast.data.dali"):
        loader = build_dali_loader(files, batch_size=6, crop_size=32, mean=MEAN, std=STD)
        assert len(loader) == (30 + 1) // 6  # 3 left out by the header check, 31 kept
        batches = list(loader)
    assert len(batches) == len(loader) and all(v1.shape == (6, 3, 32, 32) for v1, _ in batches)
    skipped = dict(loader.skipped)
    assert set(skipped) == set(bad_paths)
    assert "truncated" in skipped[str(tmp_path / "truncated.jpg")]
    for path in bad_paths:
        assert path in caplog.text
    # The next epoch does not trip over the broken file again (it is substituted).
    assert len(list(loader)) == len(loader) and len(loader.skipped) == 4


def test_validate_decode_finds_every_bad_file_up_front(tmp_path, pcam_files):
    data = bytearray(Path(pcam_files[0]).read_bytes())
    dht = data.find(b"\xff\xc4")
    data[dht : dht + 200] = b"\x13" * 200
    (tmp_path / "huffman.jpg").write_bytes(bytes(data))
    loader = build_dali_loader(
        pcam_files[:12] + [str(tmp_path / "huffman.jpg")],
        batch_size=4,
        crop_size=16,
        mean=MEAN,
        std=STD,
        validate="decode",
    )
    assert [p for p, _ in loader.skipped] == [str(tmp_path / "huffman.jpg")]
    assert len(loader) == 3


def test_errors_name_the_problem(tmp_path, pcam_files):
    with pytest.raises(FileNotFoundError, match="missing_folder"):
        build_dali_loader(str(tmp_path / "missing_folder"), batch_size=2, crop_size=16, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_dali_loader(pcam_files[:3], batch_size=4, crop_size=16, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="shard_id"):
        build_dali_loader(pcam_files[:8], batch_size=2, crop_size=16, mean=MEAN, std=STD, shard_id=2, num_shards=2)
    with pytest.raises(ValueError, match="hue_mode"):
        build_dali_loader(pcam_files[:8], batch_size=2, crop_size=16, mean=MEAN, std=STD, hue_mode="rgb")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            build_dali_loader(pcam_files[:8], batch_size=2, crop_size=16, mean=MEAN, std=STD, device="gpu")


def test_plan_substitution_keeps_length_and_skips_bad():
    plan = epoch_plan(20, seed=1, epoch=0, shard_id=0, num_shards=1)
    assert sorted(plan.tolist()) == list(range(20))
    fixed = substitute(plan, {int(plan[3]), int(plan[4]), int(plan[19])})
    assert len(fixed) == 20 and not {int(plan[3]), int(plan[4]), int(plan[19])} & set(fixed.tolist())
    assert fixed[3] == fixed[4] == plan[5] and fixed[19] == plan[0]


def test_folder_source_and_tensor_values_follow_the_recipe(tmp_path):
    """A folder is searched recursively; gray views of a colour image have R = G = B."""
    solid_images(tmp_path / "a" / "b", 16)
    loader = build_dali_loader(
        str(tmp_path / "a"),
        batch_size=8,
        crop_size=16,
        mean=(0, 0, 0),
        std=(1 / 255,) * 3,
        recipe=Recipe(p_jitter=0.0, p_gray=1.0),
    )
    v1, v2 = next(iter(loader))
    assert torch.all(v1[:, 0] == v1[:, 1]) and torch.all(v1[:, 1] == v1[:, 2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_views_stay_on_the_gpu(pcam_files):
    loader = build_dali_loader(
        pcam_files[:32], batch_size=16, crop_size=64, mean=MEAN, std=STD, device="gpu", dtype=torch.float16
    )
    v1, v2 = next(iter(loader))
    assert v1.is_cuda and v2.is_cuda and v1.dtype == torch.float16 and v1.shape == (16, 3, 64, 64)


def test_colour_matrix_is_grayscale_of_rotation_of_saturation():
    """The per-view 3x3 map equals (grayscale o) hue rotation o saturation, composed directly."""
    from clusiam_fast.data.dali_augment import LUMA, colour_basis, saturation_hue_gray

    basis = colour_basis()
    P = np.outer(np.ones(3), LUMA)
    u = np.ones(3) / np.sqrt(3.0)
    cross = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, t = rng.uniform(0.6, 1.4), rng.uniform(-0.2 * np.pi, 0.2 * np.pi)
        saturate = P + s * (np.eye(3) - P)  # blend with luma, as PIL's ImageEnhance.Color
        rotate = np.cos(t) * np.eye(3) + np.sin(t) * cross + (1 - np.cos(t)) * np.outer(u, u)
        for gray in (0.0, 1.0):
            expected = (P if gray else np.eye(3)) @ rotate @ saturate
            got = saturation_hue_gray(basis, s, np.cos(t), np.sin(t), gray)
            np.testing.assert_allclose(got, expected, atol=1e-5)
        grey = np.full(3, 0.4)
        np.testing.assert_allclose(saturation_hue_gray(basis, s, np.cos(t), np.sin(t), 0.0) @ grey, grey, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.2, 0.6, 1.0, 2.0])
def test_blur_reproduces_pils_gaussian_blur(tmp_path, sigma):
    """With sigma fixed, DALI's blur matches PIL's GaussianBlur (the trainer's) pixel by pixel."""
    from PIL import ImageFilter

    noise = np.random.default_rng(1).integers(0, 256, (40, 40), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(np.repeat(noise[:, :, None], 3, axis=2)).save(path)
    recipe = Recipe(
        scale=(1.0, 1.0), ratio=(1.0, 1.0), p_jitter=0.0, p_gray=0.0, p_blur=1.0, blur_sigma=(sigma, sigma), p_flip=0.0
    )
    loader = build_dali_loader(
        [str(path)] * 2, batch_size=2, crop_size=40, mean=(0, 0, 0), std=(1 / 255,) * 3, recipe=recipe
    )
    dali = next(iter(loader))[0][0, 0].numpy().astype(np.float64)
    pil = np.asarray(Image.open(path).filter(ImageFilter.GaussianBlur(radius=sigma)), dtype=np.float64)[:, :, 0]
    # PIL rounds after each of its six 1-D box passes, DALI after each of its two composed
    # passes: within 2 grey levels inside, ~1 on average (edges: both replicate the border).
    inner = (slice(7, -7), slice(7, -7))
    assert np.abs(dali - pil)[inner].max() <= 2.0
    assert np.abs(dali - pil).mean() < 1.2
    assert np.abs(dali - noise).mean() > 3.0  # it did blur


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_pipeline_matches_cpu_pipeline(pcam_dir):
    """Same recipe on both devices (exact HSV hue on both): same statistics of 8,192 views."""
    files = sorted(str(p) for p in (pcam_dir / "train").glob("*/*.jpg"))
    files = files[:: len(files) // 4096][:4096]

    def summary(device: str):
        loader = build_dali_loader(
            files, batch_size=256, crop_size=32, mean=MEAN, std=STD, device=device, hue_mode="hsv", drop_last=False
        )
        views = torch.cat([torch.cat([v1, v2]).float().cpu() for v1, v2 in loader]).double()
        scale, shift = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (STD, MEAN))
        x = views * scale + shift
        gray = ((x.amax(1) - x.amin(1)).flatten(1).amax(1) < 1.5 / 255).double().mean().item()
        return x.mean((0, 2, 3)).numpy(), x.transpose(0, 1).reshape(3, -1).std(1).numpy(), gray

    gpu, cpu = summary("gpu"), summary("cpu")
    # Different random streams (the graphs differ) and decoders (nvJPEG vs libjpeg-turbo):
    # the run-to-run tolerances of the parity tests (4 s.d. of a difference, no bias).
    np.testing.assert_allclose(gpu[0], cpu[0], atol=0.008)
    np.testing.assert_allclose(gpu[1], cpu[1], atol=0.005)
    assert abs(gpu[2] - cpu[2]) < 0.025
