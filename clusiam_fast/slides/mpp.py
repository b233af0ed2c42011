"""Microns per pixel (mpp) of a slide's level 0, read from its metadata.

Sources, in the order they are tried:

1. OpenSlide properties (``openslide.mpp-x/y``, then ``aperio.MPP``, then
   ``tiff.XResolution`` + ``tiff.ResolutionUnit``), when the slide was opened by OpenSlide;
2. the Aperio ImageDescription (``... |MPP = 0.4990|...``);
3. OME-XML ``Pixels/@PhysicalSizeX`` (+ ``PhysicalSizeXUnit``, default micrometre);
4. Philips TIFF ``DICOM_PIXEL_SPACING`` (millimetres);
5. the TIFF XResolution/YResolution tags with ResolutionUnit centimetre or inch.

cuCIM's ``spacing()`` is never used: it reports 1.0 for Aperio SVS files. TIFF resolution
tags are only trusted when the unit is set and the value is plausible for a microscope
(0.01 - 50 um/px): writers often leave the 72-dpi default there.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PLAUSIBLE_MPP = (0.01, 50.0)

_UNIT_TO_UM = {
    "pm": 1e-6,
    "nm": 1e-3,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "micrometer": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
    "angstrom": 1e-4,
}


@dataclass(frozen=True)
class MppInfo:
    """Pixel size of level 0 in micrometres, and where it came from."""

    x: float
    y: float
    source: str

    @property
    def mpp(self) -> float:
        """The mean of x and y (they agree on every scanner we know of)."""
        return (self.x + self.y) / 2.0


def _plausible(x: float | None, y: float | None, source: str) -> MppInfo | None:
    if x is None or y is None:
        return None
    lo, hi = PLAUSIBLE_MPP
    if not (lo <= x <= hi and lo <= y <= hi):
        return None
    return MppInfo(float(x), float(y), source)


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if out > 0 else None


def aperio_mpp(description: str | None) -> MppInfo | None:
    """``MPP = 0.4990`` in an Aperio ImageDescription."""
    if not description or not description.startswith("Aperio"):
        return None
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    value = _float(match.group(1)) if match else None
    return _plausible(value, value, "aperio description")


def ome_mpp(ome_xml: str | None) -> MppInfo | None:
    """PhysicalSizeX/Y of the first OME ``Pixels`` element, converted to micrometres."""
    if not ome_xml:
        return None
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "Pixels":
            continue
        values = []
        for axis in ("X", "Y"):
            size = _float(element.get(f"PhysicalSize{axis}"))
            unit = element.get(f"PhysicalSize{axis}Unit", "µm")
            scale = _UNIT_TO_UM.get(unit)
            values.append(size * scale if size is not None and scale is not None else None)
        return _plausible(values[0], values[1], "OME PhysicalSize")
    return None


def philips_mpp(description: str | None) -> MppInfo | None:
    """First ``DICOM_PIXEL_SPACING`` (row, column spacing in mm) of a Philips TIFF description."""
    if not description or "DICOM_PIXEL_SPACING" not in description:
        return None
    match = re.search(r'DICOM_PIXEL_SPACING"[^>]*>\s*"?([0-9.eE+-]+)"?\s+"?([0-9.eE+-]+)"?', description)
    if not match:
        return None
    y, x = (_float(v) for v in match.groups())
    if x is None or y is None:
        return None
    return _plausible(x * 1000.0, y * 1000.0, "Philips DICOM_PIXEL_SPACING")


def resolution_tag_mpp(x_resolution: object, y_resolution: object, unit: object) -> MppInfo | None:
    """TIFF X/YResolution (pixels per unit, a float or a (num, den) pair) with unit inch or cm."""
    per_um = {"2": 25400.0, "inch": 25400.0, "3": 10000.0, "centimeter": 10000.0, "cm": 10000.0}
    unit_key = str(getattr(unit, "value", unit)).lower().replace("resunit.", "")
    if unit_key not in per_um:
        return None

    def pixels_per_unit(value: object) -> float | None:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            num, den = value
            return _float(num / den) if den else None
        return _float(value)

    xr, yr = pixels_per_unit(x_resolution), pixels_per_unit(y_resolution)
    if xr is None:
        return None
    yr = yr or xr
    return _plausible(per_um[unit_key] / xr, per_um[unit_key] / yr, "TIFF resolution tags")


def openslide_mpp(properties: Mapping[str, str]) -> MppInfo | None:
    """mpp from an OpenSlide property map."""
    x, y = _float(properties.get("openslide.mpp-x")), _float(properties.get("openslide.mpp-y"))
    found = _plausible(x, y or x, "openslide.mpp-x/y") if x else None
    if found:
        return found
    aperio = _float(properties.get("aperio.MPP"))
    if aperio:
        return _plausible(aperio, aperio, "aperio.MPP")
    return resolution_tag_mpp(
        properties.get("tiff.XResolution"), properties.get("tiff.YResolution"), properties.get("tiff.ResolutionUnit")
    )


def tiff_mpp(path: str | Path) -> MppInfo | None:
    """mpp from a TIFF file's own metadata (Aperio, OME, Philips, resolution tags), via tifffile.

    Returns None when the file is not a TIFF, tifffile is missing, or no source has it.
    """
    try:
        import tifffile
    except ImportError:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
            description = page.description or ""
            for found in (
                aperio_mpp(description),
                ome_mpp(tif.ome_metadata if tif.is_ome else None),
                philips_mpp(description if tif.is_philips else None),
            ):
                if found:
                    return found
            tags = page.tags
            x, y, unit = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
            if x is None or unit is None:
                return None
            return resolution_tag_mpp(x.value, y.value if y is not None else None, unit.value)
    except Exception:  # not a TIFF, or a damaged one: the reader reports that itself
        return None
