"""Whole-slide image readers: one small interface, three backends (cuCIM, OpenSlide, tifffile).

>>> from clusiam_fast.slides import open_slide
>>> with open_slide("CMU-1-Small-Region.svs") as slide:          # doctest: +SKIP
...     slide.mpp, slide.level_dimensions, slide.backend
...     patch = slide.read_region((1000, 1000), 0, 224)          # (224, 224, 3) uint8
...     batches = slide.read_regions([(0, 0), (224, 0)], 0, 224)  # iterator of (B, 224, 224, 3)

Heavy libraries are imported only when a backend is opened.
"""

from .base import MissingMppError, SlideError, SlideReader, as_size, patch_image
from .factory import (
    BACKENDS,
    SLIDE_EXTENSIONS,
    available_backends,
    detect_vendor,
    open_slide,
    slide_id_from_path,
)
from .mpp import MppInfo

__all__ = [
    "BACKENDS",
    "SLIDE_EXTENSIONS",
    "MissingMppError",
    "MppInfo",
    "SlideError",
    "SlideReader",
    "as_size",
    "available_backends",
    "detect_vendor",
    "open_slide",
    "patch_image",
    "slide_id_from_path",
]
