"""The small interface every slide backend implements, plus what they share.

A reader gives the pyramid geometry (``level_dimensions`` as (width, height),
``level_downsamples``), the level-0 pixel size (``mpp``, from metadata, never guessed) and
RGB uint8 regions. Region locations are always level-0 (x, y), as in OpenSlide and CLAM;
sizes are in pixels of the level read.

Exact placement (every backend, every level): a level-0 location falls at ``x / downsample``
on the level's pixel grid, which is a fraction of a pixel off the grid when the downsample is
not an integer (TCGA level 1 at 2.0005) or the location is not a multiple of it. OpenSlide
(hence CLAM and TRIDENT) then shifts the level's pixels by that fraction with bilinear
interpolation; the other readers used to floor the position, up to a pixel off (a median 14
grey levels apart on TCGA). Here every reader places regions as OpenSlide does: a region one
pixel larger is read on the grid and shifted by the fraction (:func:`shift_subpixel`);
positions within ``SUBPIXEL_TOLERANCE`` px of the grid are read on it, untouched.

Edge fill: pixels outside the image come back white (255), whatever the backend. White is
glass, what the scanner shows around tissue: padding never looks like tissue or ink, and a
transparent OpenSlide pixel composited over white gives the same. (CLAM fills black: it
drops OpenSlide's alpha channel; a CLAM patch crossing the edge differs from ours there only.)

Damaged tile data under a read raises :class:`CorruptTileError` naming the slide and the
level-0 region, whatever the backend (see ``integrity.py`` for how it is found).

Readers hold open file handles and native objects (cuCIM's do not pickle): open one per
process, lazily, where it is used (see ``SlidePatchDataset``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptTileError, MissingMppError
from .mpp import MppInfo

#: level positions closer than this (in px of the level) to its pixel grid are read on the grid
SUBPIXEL_TOLERANCE = 1.0 / 512


def as_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` or ``(w, h)`` -> ``(w, h)``."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    w, h = size
    return int(w), int(h)


class SlideReader(ABC):
    """Base class of the cuCIM, OpenSlide and tifffile readers."""

    backend: str = ""
    #: the backend returns filler instead of raising on undecodable tiles (cuCIM): check its pixels too
    hides_decode_errors: bool = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.mpp_info: MppInfo | None = None
        self._tiles: Any = False  # TiffTileIndex | None once looked up; False: not yet

    # -- tile data integrity (integrity.py) ------------------------------------------------
    @property
    def tile_index(self):
        """The :class:`~.integrity.TiffTileIndex` of the file, or None (not a tiled TIFF)."""
        if self._tiles is False:
            from .integrity import TiffTileIndex

            self._tiles = TiffTileIndex.open(self.path, self.level_dimensions) if self.level_dimensions else None
        return self._tiles

    def check_region(
        self, location: Sequence[int], level: int, size: int | Sequence[int], pixels: np.ndarray | None = None
    ) -> None:
        """Raise :class:`CorruptTileError` when tile data under the region is damaged.

        The compressed tiles are checked (cheap, cached per tile); with ``pixels`` (the region
        as read), filler-looking parts are also decoded directly. Pixels outside the level are ignored.
        """
        index = self.tile_index
        if index is None or not index.covers(level):
            return
        from .integrity import corrupt_error

        w, h = as_size(size)
        ds = self.level_downsamples[level]
        lx, ly = math.floor(int(location[0]) / ds), math.floor(int(location[1]) / ds)
        found = index.check(level, lx, ly, w, h, pixels)
        if found is not None:
            region = (int(location[0]), int(location[1]), round(w * ds), round(h * ds))
            raise corrupt_error(self.path, region, level, *found)

    def find_corrupt(
        self, locations: Sequence[Sequence[int]] | np.ndarray, level: int, size: int | Sequence[int]
    ) -> list[tuple[int, CorruptTileError]]:
        """(position, error) of the regions whose compressed tile data is damaged, without decoding them."""
        bad = []
        for i, xy in enumerate(np.asarray(locations, dtype=np.int64).reshape(-1, 2)):
            try:
                self.check_region(xy, level, size)
            except CorruptTileError as error:
                bad.append((i, error))
        return bad

    # -- geometry and metadata -------------------------------------------------------------
    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel, or None when the metadata has none."""
        return self.mpp_info.mpp if self.mpp_info else None

    def require_mpp(self) -> float:
        """``mpp`` or a :class:`MissingMppError` naming the file and the fix."""
        if self.mpp is None:
            raise MissingMppError(
                f"{self.path.name}: no microns-per-pixel in the slide metadata (looked at OpenSlide "
                "properties, the Aperio description, OME PhysicalSize and TIFF resolution tags); "
                "give it with --slide-mpp X (or open_slide(..., slide_mpp=X))"
            )
        return self.mpp

    def best_level_for_downsample(self, downsample: float, tolerance: float = 0.01) -> int:
        """The coarsest level whose downsample is at most ``downsample * (1 + tolerance)``."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1.0 + tolerance) and ds >= self.level_downsamples[best]:
                best = level
        return best

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g}" if self.mpp else "unknown"
        return f"{type(self).__name__}({str(self.path)!r}, levels={self.level_dimensions}, mpp={mpp})"

    # -- pixels ----------------------------------------------------------------------------
    @abstractmethod
    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 of a region lying inside the level (level-0 x, y)."""

    def level_position(self, location: Sequence[int], level: int) -> tuple[int, int, float, float]:
        """Where level-0 ``location`` falls on ``level``: grid pixel (ix, iy) and the fraction (fx, fy) past it."""
        ds = self.level_downsamples[level]
        (ix, fx), (iy, fy) = grid_position(int(location[0]) / ds), grid_position(int(location[1]) / ds)
        return ix, iy, fx, fy

    def read_region(self, location: Sequence[int], level: int, size: int | Sequence[int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) at level-0 ``location`` (x, y), ``size`` px of ``level``, placed as OpenSlide does."""
        w, h = as_size(size)
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path.name}: level {level} does not exist (levels 0..{self.level_count - 1})")
        ix, iy, fx, fy = self.level_position(location, level)
        if not (fx or fy):
            return self.read_level_box(ix, iy, level, w, h)
        return shift_subpixel(self.read_level_box(ix, iy, level, w + 1, h + 1), fx, fy, w, h)

    def read_level_box(self, lx: int, ly: int, level: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 of the level's pixels from (lx, ly) (pixels of ``level``), white outside the image."""
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x0 == lx and y0 == ly and x1 == lx + w and y1 == ly + h:
            return self._read_checked(level0_of(lx, ds), level0_of(ly, ds), level, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            inside = self._read_checked(level0_of(x0, ds), level0_of(y0, ds), level, x1 - x0, y1 - y0)
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = inside
        return out

    def _read_checked(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """``_read`` between the tile checks: compressed tiles before, filler-looking pixels after."""
        self.check_region((x, y), level, (width, height))
        pixels = self._read(x, y, level, width, height)
        if self.hides_decode_errors:
            self.check_region((x, y), level, (width, height), pixels)
        return pixels

    def inside(self, location: Sequence[int], level: int, size: int | Sequence[int]) -> bool:
        """True when the region lies entirely inside ``level``."""
        w, h = as_size(size)
        lw, lh = self.level_dimensions[level]
        lx, ly, fx, fy = self.level_position(location, level)
        return lx >= 0 and ly >= 0 and lx + w + (fx > 0) <= lw and ly + h + (fy > 0) <= lh

    def off_slide(
        self, locations: Sequence[Sequence[int]] | np.ndarray, level: int, size: int | Sequence[int]
    ) -> np.ndarray:
        """True for each region whose field of view lies more than half its side outside level 0.

        The tolerance (half a patch on each axis: the patch centre must lie on the slide) keeps
        border patches of other tilers; beyond it a patch is mostly white padding, not slide.
        """
        w, h = as_size(size)
        ds = self.level_downsamples[level]
        xy = np.asarray(locations, dtype=np.float64).reshape(-1, 2)
        cx, cy = xy[:, 0] + w * ds / 2, xy[:, 1] + h * ds / 2
        width, height = self.dimensions
        return (cx < 0) | (cy < 0) | (cx > width) | (cy > height)

    def read_regions(
        self,
        locations: Sequence[Sequence[int]] | np.ndarray,
        level: int,
        size: int | Sequence[int],
        *,
        num_workers: int = 2,
        batch_size: int = 64,
    ) -> Iterator[np.ndarray]:
        """Batches (B, h, w, 3) of the regions at ``locations``, in order, read by threads.

        Backends override this with a faster native path where they have one.
        """
        locs = [(int(x), int(y)) for x, y in np.asarray(locations, dtype=np.int64).reshape(-1, 2)]
        if num_workers <= 1:
            for start in range(0, len(locs), batch_size):
                yield np.stack([self.read_region(xy, level, size) for xy in locs[start : start + batch_size]])
            return
        with ThreadPoolExecutor(num_workers) as pool:
            for start in range(0, len(locs), batch_size):
                chunk = locs[start : start + batch_size]
                yield np.stack(list(pool.map(lambda xy: self.read_region(xy, level, size), chunk)))

    def read_patches(
        self,
        locations: Sequence[Sequence[int]] | np.ndarray,
        level: int,
        size: int | Sequence[int],
        *,
        num_workers: int = 2,
        batch_size: int = 64,
    ) -> np.ndarray:
        """All regions at once: (N, h, w, 3) uint8."""
        w, h = as_size(size)
        batches = list(self.read_regions(locations, level, (w, h), num_workers=num_workers, batch_size=batch_size))
        return np.concatenate(batches) if batches else np.zeros((0, h, w, 3), np.uint8)

    def thumbnail(
        self, downsample: float, chunk: int = 4096, corrupt: list[CorruptTileError] | None = None
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """The whole slide at about ``downsample`` x level 0, read from the best level in chunks.

        Returns the RGB image and its exact (x, y) downsample relative to level 0. Damaged tile
        data raises :class:`CorruptTileError`; with a ``corrupt`` list, the damaged parts
        (tile-sized blocks of a failing chunk) are left white and their errors appended to it.
        """
        from PIL import Image

        downsample = max(float(downsample), 1.0)
        w0, h0 = self.dimensions
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        fx, fy = out_w / lw, out_h / lh
        out = np.full((out_h, out_w, 3), 255, np.uint8)
        ds = self.level_downsamples[level]
        for ly in range(0, lh, chunk):
            for lx in range(0, lw, chunk):
                cw, ch = min(chunk, lw - lx), min(chunk, lh - ly)
                ox0, oy0 = round(lx * fx), round(ly * fy)
                ox1, oy1 = round((lx + cw) * fx), round((ly + ch) * fy)
                if ox1 <= ox0 or oy1 <= oy0:
                    continue
                if corrupt is None:
                    region = self.read_level_box(lx, ly, level, cw, ch)
                else:
                    region = self._read_around_corruption(
                        (level0_of(lx, ds), level0_of(ly, ds)), level, (cw, ch), corrupt
                    )
                if (ox1 - ox0, oy1 - oy0) != (cw, ch):
                    region = np.asarray(Image.fromarray(region).resize((ox1 - ox0, oy1 - oy0), Image.BILINEAR))
                out[oy0:oy1, ox0:ox1] = region
        return out, (w0 / out_w, h0 / out_h)

    def _read_around_corruption(
        self, location: tuple[int, int], level: int, size: tuple[int, int], corrupt: list[CorruptTileError]
    ) -> np.ndarray:
        """``read_region``, or on damaged data the region read in tile-sized blocks, damaged ones white."""
        ds = self.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds), math.floor(location[1] / ds)
        w, h = size
        try:
            return self.read_level_box(lx, ly, level, w, h)
        except CorruptTileError:
            pass
        index = self.tile_index
        bw, bh = index.tile_size(level) if index is not None and index.covers(level) else (256, 256)
        out = np.full((h, w, 3), 255, np.uint8)
        # blocks aligned on the level's tile grid, so a damaged tile spoils only its own block
        for by in range((ly // bh) * bh, ly + h, bh):
            for bx in range((lx // bw) * bw, lx + w, bw):
                x0, y0, x1, y1 = max(bx, lx), max(by, ly), min(bx + bw, lx + w), min(by + bh, ly + h)
                try:
                    block = self.read_level_box(x0, y0, level, x1 - x0, y1 - y0)
                except CorruptTileError as error:
                    corrupt.append(error)
                    continue
                out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = block
        return out

    # -- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file; the reader cannot be used afterwards."""
        if self._tiles:
            self._tiles.close()
        self._tiles = None

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict:
        raise TypeError(
            f"{type(self).__name__} for {self.path.name} cannot be pickled: open a reader in each process "
            "(e.g. lazily in a Dataset's __getitem__)"
        )


def grid_position(position: float) -> tuple[int, float]:
    """(grid pixel, fraction past it) of a position on a level; within ``SUBPIXEL_TOLERANCE`` of the grid: on it."""
    pixel = math.floor(position + SUBPIXEL_TOLERANCE)
    fraction = position - pixel
    return pixel, (fraction if fraction > SUBPIXEL_TOLERANCE else 0.0)


def level0_of(level_pixel: int, downsample: float) -> int:
    """The smallest level-0 coordinate that floors to ``level_pixel`` on a level of ``downsample``."""
    return math.ceil(level_pixel * downsample - 1e-6)


def shift_subpixel(region: np.ndarray, fx: float, fy: float, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8 sampled ``(fx, fy)`` px into ``region`` (h + 1, w + 1, 3), bilinear, as OpenSlide (cairo) does."""
    a, fx, fy = region.astype(np.float32), float(fx), float(fy)  # float32 throughout, whatever fx's type
    if fx:
        a = a[:, :w] * (1.0 - fx) + a[:, 1 : w + 1] * fx
    if fy:
        a = a[:h] * (1.0 - fy) + a[1 : h + 1] * fy
    return np.floor(a[:h, :w] + 0.5).astype(np.uint8)


def patch_image(region: np.ndarray, output_size: int | Sequence[int]):
    """RGB uint8 array -> PIL image of ``output_size``, resized with antialiased bilinear."""
    from PIL import Image

    image = Image.fromarray(region)
    size = as_size(output_size)
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    return image
