"""tifffile backend: OME-TIFF and generic (pyramidal) TIFF, also SVS.

Regions are assembled from the TIFF's tiles (or strips), each decoded once by imagecodecs
and kept in a small LRU cache, so neighbouring patches do not decode a tile twice. File
reads are serialised by a lock; decoding runs in parallel threads (it releases the GIL).
imagecodecs returns gray for JPEG data cut short without an error: the tile checks of
``integrity.py`` run before each read, and decode errors become :class:`CorruptTileError`.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..utils.deps import require
from .base import SlideReader
from .errors import CorruptTileError, SlideError
from .mpp import tiff_mpp


class _TileCache:
    """Thread-safe LRU of decoded tiles, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            tile = self._items.get(key)
            if tile is not None:
                self._items.move_to_end(key)
            return tile

    def put(self, key: tuple[int, int], tile: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


class TiffFileReader(SlideReader):
    """Reads RGB(A) uint8 TIFF pyramids (series 0 and its levels) with tifffile."""

    backend = "tifffile"

    def __init__(self, path: str | Path, cache_bytes: int = 256 << 20) -> None:
        super().__init__(path)
        tifffile = require("tifffile", "tifffile imagecodecs", "reading TIFF slides")
        try:
            self._tif = tifffile.TiffFile(str(self.path))
            series = self._tif.series[0]
            pages = [level.keyframe for level in series.levels]
        except Exception as error:
            raise SlideError(f"{self.path.name}: not a readable TIFF ({type(error).__name__}: {error})") from error
        base = pages[0]
        if base.dtype != np.uint8 or base.ndim != 3 or base.shape[-1] not in (3, 4) or base.planarconfig != 1:
            raise SlideError(
                f"{self.path.name}: unsupported TIFF layout (shape {base.shape}, dtype {base.dtype}); "
                "slides must be interleaved RGB(A) uint8"
            )
        from .integrity import segment_table_problem

        self._pages = []
        dims = []
        for page in pages:  # keep a strictly shrinking pyramid of RGB levels
            if page.ndim != 3 or page.shape[-1] != base.shape[-1] or (dims and page.shape[1] >= dims[-1][0]):
                continue
            why = segment_table_problem(page)
            if why is not None:  # strips too (the tile index of integrity.py knows tiled pages only)
                self._tif.close()
                raise SlideError(f"{self.path.name}: level {len(dims)}: {why}; the header is damaged")
            # tifffile picks the JPEG colour space on first use of page.decode, reading the file through
            # its handle (is_jfif) outside our file lock: done here, so no tile read in a thread races it
            page.decode  # noqa: B018
            self._pages.append(page)
            dims.append((int(page.shape[1]), int(page.shape[0])))
        w0, h0 = dims[0]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in dims)
        self.mpp_info = tiff_mpp(self.path)
        self._file_lock = threading.Lock()
        self._cache = _TileCache(cache_bytes)

    def _segment(self, level: int, index: int) -> np.ndarray:
        """Decoded tile/strip ``index`` of ``level`` as (rows, cols, 3)."""
        key = (level, index)
        tile = self._cache.get(key)
        if tile is not None:
            return tile
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        th, tw = self._segment_shape(page)
        if count == 0:  # sparse TIFF: missing tiles are background
            tile = np.full((th, tw, 3), 255, np.uint8)
        else:
            fh = self._tif.filehandle
            with self._file_lock:
                fh.seek(offset)
                data = fh.read(count)
            if len(data) < count:
                raise SlideError(f"{self.path.name}: tile {index} of level {level} is truncated (file too short)")
            try:
                decoded, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as error:
                raise SlideError(
                    f"{self.path.name}: cannot decode tile {index} of level {level} ({type(error).__name__}: {error})"
                ) from error
            tile = np.ascontiguousarray(decoded.reshape(decoded.shape[-3:])[..., :3])
        self._cache.put(key, tile)
        return tile

    @staticmethod
    def _segment_shape(page) -> tuple[int, int]:
        if page.is_tiled:
            return int(page.tilelength), int(page.tilewidth)
        return int(min(page.rowsperstrip, page.shape[0])), int(page.shape[1])

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            return self._assemble(x, y, level, width, height)
        except CorruptTileError:
            raise
        except SlideError as error:
            from .integrity import region_text

            ds = self.level_downsamples[level]
            region = (x, y, round(width * ds), round(height * ds))
            raise CorruptTileError(
                f"{self.path.name}: corrupt tile data reading {region_text(region, level)}: "
                f"{str(error).removeprefix(self.path.name + ': ')}",
                region,
                level,
            ) from error

    def _assemble(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        th, tw = self._segment_shape(page)
        per_row = math.ceil(page.shape[1] / tw)
        out = np.empty((height, width, 3), np.uint8)
        for ty in range(ly // th, (ly + height - 1) // th + 1):
            for tx in range(lx // tw, (lx + width - 1) // tw + 1):
                tile = self._segment(level, ty * per_row + tx)
                # overlap of this tile with the region, in level coordinates
                x0, x1 = max(lx, tx * tw), min(lx + width, tx * tw + tw)
                y0, y1 = max(ly, ty * th), min(ly + height, ty * th + th)
                out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = tile[
                    y0 - ty * th : y1 - ty * th, x0 - tx * tw : x1 - tx * tw
                ]
        return out

    def close(self) -> None:
        self._tif.close()
        super().close()
