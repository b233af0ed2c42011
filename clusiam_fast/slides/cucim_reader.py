"""cuCIM backend: Aperio SVS, Philips TIFF and generic tiled TIFF, the fastest reader here.

Batches use cuCIM's multi-location ``read_region`` (its own worker threads decode in
parallel), on the distinct TIFF tiles when neighbouring patches share them. The pixel size comes from the file's metadata (see ``mpp.py``), never from
``CuImage.spacing()``, which reports 1.0 for SVS. ``CuImage`` objects do not pickle: open
a reader per process.

``device="cuda"`` (``CuCIMReader(path, device="cuda")``) decodes on the GPU: cuCIM 26.x's
``cuslide2`` plugin (nvImageCodec; switched on here with ``ENABLE_CUSLIDE2=1`` before cuCIM is
first imported, the old ``cuslide`` plugin being deprecated) and ``read_region(...,
device="cuda")``. :meth:`CuCIMReader.read_regions_cuda` then yields torch CUDA tensors made
from cuCIM's ``__cuda_array_interface__`` without a host copy (see ``slides.patches.read_patches``).
The numpy methods (``read_region``, ``read_regions``) still decode on the CPU. GPU reads get
the compressed-tile checks of ``integrity.py`` but not the filler check, which needs host pixels.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..utils.deps import require
from .base import SlideReader, as_size, shift_subpixel
from .errors import SlideError
from .mpp import aperio_mpp, tiff_mpp

_QUIET_OPENS = 1  # CuImage constructions still to run silenced (see _cucim)


@contextlib.contextmanager
def _native_output_silenced():
    """Send what native code prints to fd 1 and 2 to /dev/null for the duration."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved + [devnull]:
            os.close(fd)


@contextlib.contextmanager
def _without_cupy():
    """Import cuCIM without CuPy (which it imports when present, only for ``cucim.skimage``).

    CuPy costs more to import than cuCIM itself (about 1 s of CPU on the development
    machine), and CPU decoding never uses it. Later ``import cupy`` works as usual.
    """
    if "cupy" in sys.modules:
        yield
        return
    sys.modules["cupy"] = None  # ImportError inside cucim/__init__
    try:
        yield
    finally:
        if sys.modules.get("cupy", 0) is None:
            del sys.modules["cupy"]


def cuda_visible() -> str | None:
    """None when a CUDA GPU is visible, else why not (CuPy asked first, then torch)."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        return None if count > 0 else "CuPy sees no CUDA device"
    except ImportError:
        pass
    except Exception as error:  # no driver, CUDA_VISIBLE_DEVICES="" ...
        return f"CuPy: {type(error).__name__}: {error}"
    try:
        import torch
    except ImportError:
        return "neither CuPy nor torch is installed"
    return None if torch.cuda.is_available() else "torch.cuda.is_available() is False"


def _open_cuimage(path: Path, gpu: bool = False):
    """``cucim.CuImage(path)``, keeping cuFile's start-up noise out of the output.

    On machines without a GPU driver, cuCIM's GPUDirect-Storage layer (libcufile, loaded
    by torch) prints "dlopen error libcuda.so.1 ... cuFile initialization failed" on import
    and on the first open, and writes ./cufile.log. Both are harmless: silenced here, and
    the log goes to /dev/null unless CUFILE_LOGFILE_PATH says otherwise. Errors still
    arrive as exceptions.
    """
    global _QUIET_OPENS
    if "cucim" not in sys.modules:
        os.environ.setdefault("CUFILE_LOGFILE_PATH", os.devnull)
        if gpu:
            os.environ.setdefault("ENABLE_CUSLIDE2", "1")  # nvImageCodec GPU decoding (cuCIM >= 25.x)
        with _native_output_silenced(), contextlib.nullcontext() if gpu else _without_cupy():
            require("cucim", "cucim-cu13", "reading slides with cuCIM")
    import cucim

    if _QUIET_OPENS > 0:
        _QUIET_OPENS -= 1
        with _native_output_silenced():
            return cucim.CuImage(str(path))
    return cucim.CuImage(str(path))


def _stacked(batches, h: int, w: int) -> np.ndarray:
    """cuCIM's multi-location batches as one (N, h, w, 3) array.

    A batch of one location comes back as (h, w, C), not (1, h, w, C): the reshape keeps N.
    """
    arrays = [np.asarray(b) for b in batches]
    return np.concatenate([a.reshape(-1, h, w, a.shape[-1])[..., :3] for a in arrays])


def _shift_on_gpu(batch, fractions: np.ndarray, w: int, h: int):
    """``base.shift_subpixel`` of every region of a (B, h + 1, w + 1, 3) uint8 CUDA tensor."""
    import torch

    f = torch.as_tensor(fractions, dtype=torch.float32, device=batch.device)
    fx, fy = f[:, 0].view(-1, 1, 1, 1), f[:, 1].view(-1, 1, 1, 1)
    a = batch.float()
    a = a[:, :, :w] * (1.0 - fx) + a[:, :, 1 : w + 1] * fx
    a = a[:, :h] * (1.0 - fy) + a[:, 1 : h + 1] * fy
    return torch.floor(a + 0.5).to(torch.uint8)


class CuCIMReader(SlideReader):
    """Reads through ``cucim.CuImage`` (on the CPU here; cuCIM can decode on a GPU too)."""

    backend = "cucim"
    hides_decode_errors = True  # undecodable tiles come back black / gray, with a message on fd 2

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        super().__init__(path)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"{self.path.name}: device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda":
            why = cuda_visible()
            if why is not None:
                raise SlideError(f"{self.path.name}: device='cuda' asked for, but no CUDA GPU is visible ({why})")
        self.device = device
        try:
            self._image = _open_cuimage(self.path, gpu=device == "cuda")
        except ImportError:
            raise
        except Exception as error:
            raise SlideError(f"{self.path.name}: cuCIM cannot open it ({type(error).__name__}: {error})") from error
        resolutions = self._image.resolutions
        self.level_dimensions = tuple((int(w), int(h)) for w, h in resolutions["level_dimensions"])
        self.level_downsamples = tuple(float(d) for d in resolutions["level_downsamples"])
        self.level_tile_sizes = tuple((int(w), int(h)) for w, h in resolutions.get("level_tile_sizes", ()))
        if len(self.level_tile_sizes) != len(self.level_dimensions):
            self.level_tile_sizes = ((0, 0),) * len(self.level_dimensions)
        self.mpp_info = tiff_mpp(self.path) or aperio_mpp(self._image.raw_metadata)

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            region = np.asarray(self._image.read_region((x, y), (width, height), level))
        except Exception as error:
            raise SlideError(
                f"{self.path.name}: cuCIM read failed at ({x}, {y}) level {level} ({type(error).__name__}: {error})"
            ) from error
        return np.ascontiguousarray(region[..., :3])

    def read_regions(
        self,
        locations: Sequence[Sequence[int]] | np.ndarray,
        level: int,
        size: int | Sequence[int],
        *,
        num_workers: int = 2,
        batch_size: int = 64,
    ) -> Iterator[np.ndarray]:
        """cuCIM's batched multi-location read, ``num_workers`` decoding threads.

        Neighbouring patches share TIFF tiles (a 224-px grid over 240-px tiles touches ~4
        tiles per patch, but each tile belongs to ~1 patch): when a batch's patches share
        tiles, the batch reads the distinct tile-aligned regions once, in one multi-location
        call, and cuts the patches from them; otherwise it reads the patches directly.
        Regions that cross the image border are read one by one (white padding).
        """
        w, h = as_size(size)
        locs = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
        if not len(locs):
            return
        if not all(self.inside(xy, level, (w, h)) for xy in locs):
            yield from super().read_regions(locs, level, (w, h), num_workers=num_workers, batch_size=batch_size)
            return
        # off the level's pixel grid (see base.py): one pixel more, read on the grid, then shifted
        places = np.array([self.level_position(xy, level) for xy in locs], np.float64).reshape(-1, 4)
        shifted = bool(places[:, 2:].any())
        ds = self.level_downsamples[level]
        grid = np.ceil(places[:, :2] * ds - 1e-6).astype(np.int64)  # level-0 of the grid pixels (base.level0_of)
        rw, rh = (w + 1, h + 1) if shifted else (w, h)
        for start in range(0, len(locs), batch_size):
            chunk = grid[start : start + batch_size]
            for xy in chunk:
                self.check_region(xy, level, (rw, rh))
            try:
                batch = self._read_batch(chunk, level, rw, rh, max(1, num_workers))
            except SlideError:
                raise
            except Exception as error:
                raise SlideError(
                    f"{self.path.name}: cuCIM batched read failed ({type(error).__name__}: {error})"
                ) from error
            for xy, pixels in zip(chunk, batch):
                self.check_region(xy, level, (rw, rh), pixels)
            if shifted:
                fractions = places[start : start + batch_size, 2:]
                batch = np.stack([shift_subpixel(b, fx, fy, w, h) for b, (fx, fy) in zip(batch, fractions)])
            yield batch

    def _read_batch(self, locs: np.ndarray, level: int, w: int, h: int, workers: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        tw, th = self.level_tile_sizes[level]
        level_xy = np.floor(locs / ds).astype(np.int64)
        if tw > 0 and th > 0 and tw * th <= (1 << 20):
            first = level_xy // (tw, th)
            last = (level_xy + (w - 1, h - 1)) // (tw, th)
            touches = int(np.prod(last - first + 1, axis=1).sum())
            tiles = sorted(
                {
                    (tx, ty)
                    for (fx, fy), (lx, ly) in zip(first, last)
                    for ty in range(fy, ly + 1)
                    for tx in range(fx, lx + 1)
                }
            )
            if len(tiles) * 4 <= touches * 3:  # sharing saves at least a quarter of the decoding
                return self._cut_from_tiles(level_xy, tiles, level, w, h, tw, th, workers)
        batches = self._image.read_region(
            [(int(x), int(y)) for x, y in locs], (w, h), level, num_workers=workers, batch_size=len(locs)
        )
        return _stacked(batches, h, w)

    def _cut_from_tiles(self, level_xy, tiles, level, w, h, tw, th, workers) -> np.ndarray:
        ds = self.level_downsamples[level]
        origins = [(math.ceil(tx * tw * ds - 1e-6), math.ceil(ty * th * ds - 1e-6)) for tx, ty in tiles]
        batches = self._image.read_region(origins, (tw, th), level, num_workers=workers, batch_size=len(origins))
        decoded = _stacked(batches, th, tw)
        index = {tile: i for i, tile in enumerate(tiles)}
        out = np.empty((len(level_xy), h, w, 3), np.uint8)
        for k, (lx, ly) in enumerate(level_xy):
            for ty in range(ly // th, (ly + h - 1) // th + 1):
                for tx in range(lx // tw, (lx + w - 1) // tw + 1):
                    x0, x1 = max(lx, tx * tw), min(lx + w, tx * tw + tw)
                    y0, y1 = max(ly, ty * th), min(ly + h, ty * th + th)
                    out[k, y0 - ly : y1 - ly, x0 - lx : x1 - lx] = decoded[
                        index[(tx, ty)], y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw
                    ]
        return out

    def read_regions_cuda(
        self,
        locations: Sequence[Sequence[int]] | np.ndarray,
        level: int,
        size: int | Sequence[int],
        *,
        num_workers: int = 2,
        batch_size: int = 64,
    ):
        """Batches (B, h, w, 3) uint8 torch tensors on the GPU, decoded there (needs ``device="cuda"``).

        Regions must lie inside the level (GPU reads get no white padding).
        """
        import torch

        if self.device != "cuda":
            raise SlideError(f"{self.path.name}: GPU reads need CuCIMReader(path, device='cuda')")
        w, h = as_size(size)
        locs = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
        for xy in locs:
            if not self.inside(xy, level, (w, h)):
                raise SlideError(f"{self.path.name}: region at {tuple(xy)} crosses the border of level {level}")
        places = np.array([self.level_position(xy, level) for xy in locs], np.float64).reshape(-1, 4)
        shifted = bool(places[:, 2:].any())  # off the grid: one pixel more, shifted on the GPU (base.py)
        rw, rh = (w + 1, h + 1) if shifted else (w, h)
        grid = np.ceil(places[:, :2] * self.level_downsamples[level] - 1e-6).astype(np.int64)
        for xy in grid:
            self.check_region(xy, level, (rw, rh))
        for start in range(0, len(locs), batch_size):
            chunk = [(int(x), int(y)) for x, y in grid[start : start + batch_size]]
            try:
                if len(chunk) == 1:
                    batches = [self._image.read_region(chunk[0], (rw, rh), level, device="cuda")]
                else:
                    batches = self._image.read_region(
                        chunk, (rw, rh), level, device="cuda", num_workers=max(1, num_workers), batch_size=len(chunk)
                    )
                tensors = [torch.as_tensor(b, device="cuda") for b in batches]
            except Exception as error:
                raise SlideError(
                    f"{self.path.name}: cuCIM GPU read failed ({type(error).__name__}: {error})"
                ) from error
            tensors = [t.reshape(-1, rh, rw, t.shape[-1])[..., :3] for t in tensors]
            batch = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
            if shifted:
                batch = _shift_on_gpu(batch, places[start : start + batch_size, 2:], w, h)
            yield batch.contiguous()

    def close(self) -> None:
        self._image.close()
        super().close()
