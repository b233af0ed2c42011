"""What a tiling worker uses, imported at once: the fork server of the local pool imports this module
before it forks the workers, so that no worker pays for it (``tile --workers N`` starts that server
first thing, naming this module, so that these imports run while the driver makes its own).

The tiling pipeline and the libraries it imports on first use (so that the CLI answers --help at
once); missing ones are skipped. Not cuCIM: it must be imported with its environment set per
decode device (``slides/cucim_reader.py``).
"""

import contextlib
import importlib

from . import pipeline  # noqa: F401

LIBRARIES = (
    "h5py",
    "PIL.Image",
    "PIL.ImageDraw",
    "PIL.ImageFilter",
    "PIL.PngImagePlugin",
    "tifffile",
    "openslide",
    "skimage.measure._find_contours",  # the GeoJSON contours (tiling/contours.py)
)

for _name in LIBRARIES:
    with contextlib.suppress(ImportError):
        importlib.import_module(_name)
