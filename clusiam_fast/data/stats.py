"""Per-channel mean and std of a set of RGB images, for input normalisation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .patch_folder import load_rgb
from .tolerant import TolerantDataset


def _identity(item):
    return item


def _channel_sums(images, index: int):
    """(sum, sum of squares, pixel count) per channel of image ``index``."""
    item = images[index]
    img = load_rgb(item) if isinstance(item, (str, os.PathLike)) else item
    if isinstance(img, torch.Tensor):  # (3, H, W) in [0, 1]
        arr = img.double().permute(1, 2, 0).reshape(-1, 3).numpy()
    else:
        arr = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255.0
    return arr.sum(0), (arr * arr).sum(0), arr.shape[0]


def dataset_mean_std(
    images: Sequence, max_images: int = 2000, seed: int = 0, *, num_workers: int = 0, progress: bool = False
) -> tuple[list[float], list[float]]:
    """Mean and std per RGB channel (values in [0, 1]) over a random sample of images.

    Args:
        images: image paths, or an indexable dataset returning PIL images (or (3, H, W)
            tensors in [0, 1]).
        max_images: sample size (without replacement; all images when fewer).
        seed: the sample's seed.
        num_workers: DataLoader workers decoding in parallel.
        progress: show a progress bar.

    Pixels of all sampled images are pooled (float64 sums). Unreadable images are
    skipped and reported; ValueError when none can be read.
    """
    n = len(images)
    if n == 0:
        raise ValueError("dataset_mean_std: no images given")
    g = torch.Generator().manual_seed(seed)
    indices = torch.randperm(n, generator=g)[: min(n, max_images)].tolist()
    loader = torch.utils.data.DataLoader(
        TolerantDataset(images, _channel_sums, indices), batch_size=None, num_workers=num_workers, collate_fn=_identity
    )
    total, total_sq, count, failures = np.zeros(3), np.zeros(3), 0, []
    for item, _index, error in tqdm(loader, desc="normalisation stats", disable=not progress, leave=False):
        if error is not None:
            failures.append(error)
            continue
        s, sq, c = item
        total += s
        total_sq += sq
        count += c
    if count == 0:
        raise ValueError(
            f"dataset_mean_std: none of the {len(indices)} sampled images could be read; first error: {failures[0]}"
        )
    if failures:
        print(f"dataset_mean_std: skipped {len(failures)} unreadable image(s), e.g. {failures[0]}")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return mean.tolist(), std.tolist()
