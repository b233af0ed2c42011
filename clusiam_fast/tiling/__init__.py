"""Whole slides -> tissue patches: tissue detection, patch grid, CLAM h5, QA thumbnails.

The CLI is ``python -m clusiam_fast.tile`` (see its docstring); the library functions:

>>> from clusiam_fast.tiling import TileConfig, tile_slides      # doctest: +SKIP
>>> report = tile_slides(["slides/"], "out", TileConfig(target_mpp=0.5), workers=4)
>>> print(report.summary())
"""

from ..formats.coords_h5 import CLAM_ATTRS, read_coords_h5, write_coords_h5
from ..formats.manifest import COLUMNS as MANIFEST_COLUMNS
from ..formats.manifest import read_manifest, write_manifest
from .grid import ReadPlan, grid_coords, plan_read
from .pipeline import (
    NoTissueError,
    SlideFailure,
    TileConfig,
    TilingReport,
    find_slides,
    tile_slide,
    tile_slides,
)
from .tissue import TissueParams, detect_tissue, saturation, tissue_fractions

__all__ = [
    "CLAM_ATTRS",
    "MANIFEST_COLUMNS",
    "NoTissueError",
    "ReadPlan",
    "SlideFailure",
    "TileConfig",
    "TilingReport",
    "TissueParams",
    "detect_tissue",
    "find_slides",
    "grid_coords",
    "plan_read",
    "read_coords_h5",
    "read_manifest",
    "saturation",
    "tile_slide",
    "tile_slides",
    "tissue_fractions",
    "write_coords_h5",
    "write_manifest",
]
