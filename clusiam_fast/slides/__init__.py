"""Whole-slide image readers: one small interface, three backends (cuCIM, OpenSlide, tifffile).

>>> from clusiam_fast.slides import open_slide
>>> with open_slide("CMU-1-Small-Region.svs") as slide:          # doctest: +SKIP
...     slide.mpp, slide.level_dimensions, slide.backend
...     patch = slide.read_region((1000, 1000), 0, 224)          # (224, 224, 3) uint8
...     batches = slide.read_regions([(0, 0), (224, 0)], 0, 224)  # iterator of (B, 224, 224, 3)
>>> with open_slide("CMU-1-Small-Region.svs", device="cuda") as slide:  # doctest: +SKIP
...     gpu = read_patches(slide, [(0, 0), (224, 0)], 0, 224, device="cuda")  # torch uint8 on the GPU

Heavy libraries are imported only when a backend is opened.
"""

from .base import SlideReader, as_size, patch_image
from .errors import CorruptTileError, MissingMppError, OffSlideError, SlideError
from .factory import (
    BACKENDS,
    SLIDE_EXTENSIONS,
    available_backends,
    check_decode_device,
    detect_vendor,
    open_slide,
    slide_id_from_path,
)
from .mpp import MppInfo
from .patches import iter_patches, read_patches

__all__ = [
    "BACKENDS",
    "CorruptTileError",
    "SLIDE_EXTENSIONS",
    "MissingMppError",
    "MppInfo",
    "OffSlideError",
    "SlideError",
    "SlideReader",
    "as_size",
    "available_backends",
    "check_decode_device",
    "detect_vendor",
    "iter_patches",
    "open_slide",
    "patch_image",
    "read_patches",
    "slide_id_from_path",
]
