"""``read_patches``: many same-size patches of a slide, decoded on the CPU or the GPU.

>>> from clusiam_fast.slides import open_slide, read_patches
>>> with open_slide("slide.svs", device="cuda") as reader:             # doctest: +SKIP
...     batch = read_patches(reader, coords, level=0, size=224, device="cuda")  # torch uint8 on cuda

``device="cpu"`` returns a numpy (N, h, w, 3) uint8 array (any backend); ``device="cuda"``
returns a torch (N, h, w, 3) uint8 CUDA tensor decoded by cuCIM on the GPU with no host copy
(the reader must be a cuCIM reader opened with ``device="cuda"``). Damaged tile data raises
:class:`~clusiam_fast.slides.CorruptTileError` either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import SlideReader
from .errors import SlideError


def read_patches(
    reader: SlideReader,
    coords: Sequence[Sequence[int]] | np.ndarray,
    level: int,
    size: int | Sequence[int],
    device: str = "cpu",
    *,
    num_workers: int = 2,
    batch_size: int = 64,
):
    """All patches at level-0 ``coords`` (N, 2) of ``level``, ``size`` px: numpy on cpu, torch on cuda."""
    if device == "cpu":
        return reader.read_patches(coords, level, size, num_workers=num_workers, batch_size=batch_size)
    return _cat(iter_patches(reader, coords, level, size, device, num_workers=num_workers, batch_size=batch_size))


def iter_patches(
    reader: SlideReader,
    coords: Sequence[Sequence[int]] | np.ndarray,
    level: int,
    size: int | Sequence[int],
    device: str = "cpu",
    *,
    num_workers: int = 2,
    batch_size: int = 64,
):
    """Batches of :func:`read_patches`, in order."""
    if device == "cpu":
        yield from reader.read_regions(coords, level, size, num_workers=num_workers, batch_size=batch_size)
        return
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if reader.backend != "cucim" or getattr(reader, "device", "cpu") != "cuda":
        raise SlideError(
            f"{reader.path.name}: GPU decoding needs a cuCIM reader opened with device='cuda' "
            f"(open_slide(path, device='cuda')); this one is {reader.backend} on "
            f"{getattr(reader, 'device', 'cpu')}"
        )
    yield from reader.read_regions_cuda(coords, level, size, num_workers=num_workers, batch_size=batch_size)


def _cat(batches):
    import torch

    batches = list(batches)
    return torch.cat(batches) if batches else torch.zeros((0, 0, 0, 3), dtype=torch.uint8, device="cuda")


__all__ = ["iter_patches", "read_patches"]
