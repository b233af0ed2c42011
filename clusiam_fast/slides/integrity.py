"""Corrupt tile data: found by checking the TIFF tiles under a read, not by guessing from pixels.

What the backends do with an undecodable JPEG tile (measured on CMU-1-Small-Region.svs with
tile bytes zeroed, cuCIM 26.10, OpenSlide 4, tifffile + imagecodecs):

- tile fully zeroed ("Not a JPEG file"): OpenSlide and tifffile raise; cuCIM prints the
  libjpeg message on fd 2 and returns the tile as black (0, 0, 0, with a few stray values);
- tile tail zeroed ("Premature end of JPEG file") or a run zeroed inside the entropy-coded
  data ("premature end of data segment"): OpenSlide raises (it treats libjpeg warnings as
  errors); cuCIM *and* tifffile return the decoded part and mid-gray (128, 128, 128) for the
  rest, without an error.

Pixel heuristics alone cannot tell that filler from real black or gray, and glass is nearly
uniform too. So the check works on the compressed TIFF tiles themselves (:class:`TiffTileIndex`,
built from tifffile's ``dataoffsets`` / ``databytecounts``), each tile judged once and cached:

1. the tile's bytes must lie inside the file;
2. JPEG tiles must start with SOI (FF D8) and, trailing zero padding removed, end with EOI
   (FF D9); JPEG 2000 ones must start with SOC (FF 4F) or the JP2 signature box and end
   with EOC (FF D9);
3. JPEG / JPEG 2000 tiles must not contain a run of ``ZERO_RUN`` (64) zero bytes: a zeroed
   stretch of entropy-coded data. Real coded data never has one (none in any tile of the
   three slides in shared/data, glass tiles included: coded glass is short, not zero);
4. for cuCIM only, which hides decode failures: when a tile's part of a read is at least
   half exactly black or exactly (128, 128, 128) (the two fillers above), the tile is
   decoded directly with tifffile/imagecodecs, and a decode error marks it corrupt. Real
   black or gray that decodes fine is kept.

Empty tiles (byte count 0, sparse TIFF) are background, not corruption. Files that tifffile
cannot index (MRXS, ...) get no tile check; OpenSlide still raises on their decode errors.
Errors are :class:`CorruptTileError`, naming the slide and the level-0 region.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import CorruptTileError, SlideError

ZERO_RUN = 64
_JPEG = {6, 7, 34892}  # OJPEG, JPEG, lossy JPEG (DNG)
_J2K = {33003, 33004, 33005, 34712}  # Aperio JPEG 2000 YCbCr / RGB, JPEG 2000
FILLERS = ((0, 0, 0), (128, 128, 128))


def region_text(region: Sequence[int], level: int) -> str:
    x, y, w, h = (int(v) for v in region)
    return f"level-0 x={x}, y={y}, size {w}x{h} (level {level})"


def tile_problem(data: bytes, compression: int) -> str | None:
    """Why the compressed bytes of one tile are damaged (rules 2-3 of the module docstring), or None."""
    if compression in _JPEG:
        if not data.startswith(b"\xff\xd8"):
            return f"no JPEG start marker (starts with {data[:2].hex(' ')})"
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            return "no JPEG end marker (truncated or zeroed tail)"
    elif compression in _J2K:
        if not (data.startswith(b"\xff\x4f") or data.startswith(b"\0\0\0\x0cjP")):
            return f"no JPEG 2000 start marker (starts with {data[:2].hex(' ')})"
        if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
            return "no JPEG 2000 end marker (truncated or zeroed tail)"
    else:
        return None
    if b"\0" * ZERO_RUN in data:
        return f"a run of {ZERO_RUN}+ zero bytes inside the coded data"
    return None


def segment_table_problem(page) -> str | None:
    """Why a TIFF page's tile (or strip) table cannot hold the image its header claims, or None.

    A header edited or damaged to claim a bigger image (say 60000 x 60000 px over 4 tiles)
    would otherwise fail on the first read past the table with an unnamed IndexError.
    """
    width, height = int(page.imagewidth), int(page.imagelength)
    if page.is_tiled:
        tw, th = int(page.tilewidth), int(page.tilelength)
        needed, unit = math.ceil(width / tw) * math.ceil(height / th), f"tiles of {tw} x {th} px"
    else:
        rows = max(1, min(int(page.rowsperstrip or height), height))
        needed, unit = math.ceil(height / rows), f"strips of {rows} rows"
    if int(page.planarconfig) == 2:
        needed *= int(page.samplesperpixel)
    found = min(len(page.dataoffsets), len(page.databytecounts))
    if found >= needed:
        return None
    return f"its TIFF header says {width} x {height} px, which takes {needed} {unit}, but the file lists {found}"


def check_segment_tables(reader) -> None:
    """SlideError naming the file when a level's TIFF tile table is shorter than its header's image."""
    index = reader.tile_index
    found = None if index is None else index.table_problem()
    if found is not None:
        raise SlideError(
            f"{reader.path.name}: level {found[0]}: {found[1]}; the header is damaged or the image data is missing "
            "(copy or export the slide again)"
        )


class TiffTileIndex:
    """The TIFF tiles behind each level of a reader, with a cached verdict per tile."""

    def __init__(self, path: str | Path, level_dimensions: Sequence[tuple[int, int]]) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(str(self.path))
        self._fd = os.open(str(self.path), os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size
        pages = {}
        for page in self._tif.pages:
            shape = getattr(page, "shape", ())
            if len(shape) >= 2 and page.is_tiled:
                pages.setdefault((int(shape[1]), int(shape[0])), page)
        self._levels = [pages.get((int(w), int(h))) for w, h in level_dimensions]
        w0, h0 = level_dimensions[0]
        self._scale = [(w0 / w, h0 / h) for w, h in level_dimensions]
        self._verdicts: dict[tuple[int, int], str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, level_dimensions: Sequence[tuple[int, int]]) -> TiffTileIndex | None:
        """The index, or None when tifffile is missing or cannot read the file as a tiled TIFF."""
        try:
            index = cls(path, level_dimensions)
        except Exception:
            return None
        if not any(page is not None for page in index._levels):
            index.close()
            return None
        return index

    def table_problem(self) -> tuple[int, str] | None:
        """(level, why) of the first level whose tile table cannot hold its header's image, or None."""
        for level, page in enumerate(self._levels):
            why = None if page is None else segment_table_problem(page)
            if why is not None:
                return level, why
        return None

    def covers(self, level: int) -> bool:
        return 0 <= level < len(self._levels) and self._levels[level] is not None

    def tile_size(self, level: int) -> tuple[int, int]:
        page = self._levels[level]
        return int(page.tilewidth), int(page.tilelength)

    def tiles(self, level: int, lx: int, ly: int, width: int, height: int) -> list[tuple[int, int, int]]:
        """(index, tile x, tile y) of the tiles a level-pixel region touches."""
        page = self._levels[level]
        tw, th = int(page.tilewidth), int(page.tilelength)
        per_row = math.ceil(page.shape[1] / tw)
        rows = math.ceil(page.shape[0] / th)
        out = []
        for ty in range(max(ly, 0) // th, min((ly + height - 1) // th, rows - 1) + 1):
            for tx in range(max(lx, 0) // tw, min((lx + width - 1) // tw, per_row - 1) + 1):
                out.append((ty * per_row + tx, tx, ty))
        return out

    def problem(self, level: int, index: int) -> str | None:
        """Why tile ``index`` of ``level`` is damaged (rules 1-3), or None; judged once."""
        key = (level, index)
        if key in self._verdicts:
            return self._verdicts[key]
        page = self._levels[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        if count == 0:
            verdict = None
        elif offset + count > self._size:
            verdict = "tile data lies past the end of the file (truncated file)"
        else:
            verdict = tile_problem(os.pread(self._fd, count, offset), int(page.compression))
        with self._lock:
            self._verdicts[key] = verdict
        return verdict

    def decode_problem(self, level: int, index: int) -> str | None:
        """Rules 1-3, then a direct decode with tifffile/imagecodecs (rule 4); None when it decodes."""
        verdict = self.problem(level, index)
        if verdict is not None:
            return verdict
        key = (level, -1 - index)
        if key in self._verdicts:
            return self._verdicts[key]
        page = self._levels[level]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        verdict = None
        if count:
            try:
                page.decode(os.pread(self._fd, count, offset), index, jpegtables=page.jpegtables)
            except Exception as error:
                verdict = f"does not decode ({type(error).__name__}: {error})"
        with self._lock:
            self._verdicts[key] = verdict
        return verdict

    def tile_region(self, level: int, tx: int, ty: int) -> tuple[int, int, int, int]:
        """Level-0 (x, y, w, h) of tile (tx, ty) of ``level``."""
        tw, th = self.tile_size(level)
        sx, sy = self._scale[level]
        return round(tx * tw * sx), round(ty * th * sy), round(tw * sx), round(th * sy)

    def check(
        self, level: int, lx: int, ly: int, width: int, height: int, pixels: np.ndarray | None = None
    ) -> tuple[tuple[int, int, int, int], str] | None:
        """The first damaged tile under a level-pixel region: (its level-0 box, why), or None.

        With ``pixels`` (the region as read, (height, width, 3)), also rule 4 on filler-like parts.
        """
        if not self.covers(level):
            return None
        tw, th = self.tile_size(level)
        for index, tx, ty in self.tiles(level, lx, ly, width, height):
            why = self.problem(level, index)
            if why is None and pixels is not None:
                x0, x1 = max(lx, tx * tw) - lx, min(lx + width, tx * tw + tw) - lx
                y0, y1 = max(ly, ty * th) - ly, min(ly + height, ty * th + th) - ly
                if looks_like_filler(pixels[y0:y1, x0:x1]):
                    why = self.decode_problem(level, index)
            if why is not None:
                return self.tile_region(level, tx, ty), f"TIFF tile {index}: {why}"
        return None

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self._tif.close()


def looks_like_filler(block: np.ndarray) -> bool:
    """At least half of ``block`` is exactly one of the backends' fillers (black, 128 gray)."""
    if block.size == 0:
        return False
    half = block.shape[0] * block.shape[1] / 2
    for value in FILLERS:
        value = np.broadcast_to(value, (3,))
        # exact, cheapest test first: most tissue has few pixels with the filler's red value
        if np.count_nonzero(block[..., 0] == value[0]) < half:
            continue
        if np.count_nonzero((block[..., :3] == value).all(axis=-1)) >= half:
            return True
    return False


def corrupt_error(path: Path, region: Sequence[int], level: int, tile_box: Sequence[int], why: str) -> CorruptTileError:
    """The error raised for a read over damaged tile data."""
    tx, ty, tw, th = tile_box
    return CorruptTileError(
        f"{path.name}: corrupt tile data reading {region_text(region, level)}: {why} "
        f"(tile at level-0 x={tx}, y={ty}, {tw}x{th} px)",
        region,
        level,
    )
