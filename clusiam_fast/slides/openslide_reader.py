"""OpenSlide backend: every vendor format OpenSlide knows (SVS, NDPI, MRXS, SCN, ...).

OpenSlide raises on undecodable tile data (libjpeg warnings included) and then refuses every
later call on that handle; a failed read is turned into :class:`CorruptTileError` naming the
region, and the slide is reopened so that other regions can still be read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.deps import require
from .base import SlideReader, as_size
from .errors import CorruptTileError, SlideError
from .mpp import openslide_mpp, tiff_mpp


def rgba_to_rgb_white(rgba: np.ndarray) -> np.ndarray:
    """Composite OpenSlide's (non-premultiplied) RGBA over white; transparent = outside the scan."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


class OpenSlideReader(SlideReader):
    """Reads through ``openslide.OpenSlide``; thread-safe, so threaded batches work."""

    backend = "openslide"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        openslide = require("openslide", "openslide-python openslide-bin", "reading slides with OpenSlide")
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except Exception as error:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise SlideError(f"{self.path.name}: OpenSlide cannot open it ({type(error).__name__}: {error})") from error
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = dict(self._slide.properties)
        self.mpp_info = openslide_mpp(self.properties) or tiff_mpp(self.path)

    def read_region(self, location, level, size):
        """OpenSlide pads outside the image itself (transparent -> white here)."""
        w, h = as_size(size)
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path.name}: level {level} does not exist (levels 0..{self.level_count - 1})")
        return self._read_checked(int(location[0]), int(location[1]), level, w, h)

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        try:
            image = self._slide.read_region((x, y), level, (width, height))
        except Exception as error:
            from .integrity import region_text

            self._reopen()
            ds = self.level_downsamples[level]
            region = (x, y, round(width * ds), round(height * ds))
            raise CorruptTileError(
                f"{self.path.name}: OpenSlide read failed, corrupt tile data? reading {region_text(region, level)}: "
                f"{error}",
                region,
                level,
            ) from error
        return rgba_to_rgb_white(np.asarray(image))

    def _reopen(self) -> None:
        """A new handle: OpenSlide's is unusable after an error."""
        import openslide

        try:
            self._slide.close()
        except Exception:
            pass
        self._slide = openslide.OpenSlide(str(self.path))

    def close(self) -> None:
        self._slide.close()
        super().close()
