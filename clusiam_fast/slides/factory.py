"""``open_slide``: pick a backend for a file and open it.

``backend="auto"`` chooses by what the file is (OpenSlide's format detection, which only
reads the header):

- Aperio SVS, Philips TIFF -> cuCIM (identical pixels to OpenSlide, faster), else OpenSlide;
- generic tiled TIFF -> cuCIM if it decodes a probe region like tifffile does, else OpenSlide;
- other OpenSlide formats (NDPI, MRXS, SCN, ...) -> OpenSlide;
- TIFFs OpenSlide does not know (OME-TIFF, ...) -> tifffile. cuCIM opens Bio-Formats
  OME-TIFFs but decodes their JPEG tiles with wrong colours (YCbCr read as RGB), so it is
  not used for them, and an explicit ``backend="cucim"`` on such a file is refused.

Backends that are not installed are skipped; if none can open the file a
:class:`SlideError` names it and says what each backend reported.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from .base import SlideReader
from .errors import SlideError
from .mpp import MppInfo

BACKENDS = ("cucim", "openslide", "tifffile")

#: File endings taken as slides when a folder is scanned (a file named explicitly is always tried).
SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".qptiff",
)

#: Largest per-channel difference accepted between cuCIM and tifffile on the probe region.
PROBE_TOLERANCE = 8


def available_backends() -> list[str]:
    """The backends whose library is installed, in preference order."""
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def slide_id_from_path(path: str | Path) -> str:
    """File name without its extension (``x.ome.tif`` -> ``x``), as CLAM names its h5 files."""
    name = Path(path).name
    for ending in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return Path(name).stem


def _reader_class(backend: str) -> type[SlideReader]:
    if backend == "cucim":
        from .cucim_reader import CuCIMReader

        return CuCIMReader
    if backend == "openslide":
        from .openslide_reader import OpenSlideReader

        return OpenSlideReader
    if backend == "tifffile":
        from .tifffile_reader import TiffFileReader

        return TiffFileReader
    raise ValueError(f"unknown slide backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")


def detect_vendor(path: str | Path) -> str | None:
    """OpenSlide's format name (``aperio``, ``generic-tiff``, ...) or None (unknown / no OpenSlide)."""
    if importlib.util.find_spec("openslide") is None:
        return None
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


def _auto_order(vendor: str | None) -> list[str]:
    if vendor in ("aperio", "philips", "generic-tiff"):
        order = ["cucim", "openslide", "tifffile"]
    elif vendor is not None:
        order = ["openslide"]
    else:
        order = ["tifffile", "openslide"]
    installed = set(available_backends())
    return [name for name in order if name in installed]


def check_cucim_colours(reader: SlideReader) -> None:
    """Compare a central region read by cuCIM with tifffile's; raise SlideError when they differ.

    cuCIM misreads some TIFFs it opens (JPEG tiles of Bio-Formats OME-TIFFs come out in
    YCbCr). Skipped when tifffile is missing or cannot read the file.
    """
    if importlib.util.find_spec("tifffile") is None:
        return
    from .tifffile_reader import TiffFileReader

    try:
        reference = TiffFileReader(reader.path, cache_bytes=16 << 20)
    except SlideError:
        return
    with reference:
        if reference.dimensions != reader.dimensions:
            return
        w, h = reader.dimensions
        size = (min(256, w), min(256, h))
        location = ((w - size[0]) // 2, (h - size[1]) // 2)
        ours = reader.read_region(location, 0, size).astype(np.int16)
        theirs = reference.read_region(location, 0, size).astype(np.int16)
    diff = int(np.abs(ours - theirs).max())
    if diff > PROBE_TOLERANCE:
        raise SlideError(
            f"{reader.path.name}: cuCIM decodes this file differently from tifffile (max difference {diff}; "
            "known for JPEG OME-TIFFs written by Bio-Formats); use backend 'tifffile' (--backend tifffile)"
        )


def check_decode_device(device: str, backend: str = "auto", flag: str = "--decode-device") -> None:
    """ValueError unless ``device`` can be used with ``backend``: cuda needs cuCIM and a visible GPU."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"{flag} must be cpu or cuda, got {device!r}")
    if device == "cpu":
        return
    if backend not in ("auto", "cucim"):
        raise ValueError(
            f"{flag} cuda decodes with cuCIM; it cannot be used with backend {backend!r} "
            "(use --backend cucim or auto, or --decode-device cpu)"
        )
    if importlib.util.find_spec("cucim") is None:
        raise ValueError(f"{flag} cuda needs cuCIM (pip install cucim-cu13)")
    from .cucim_reader import cuda_visible

    why = cuda_visible()
    if why is not None:
        raise ValueError(f"{flag} cuda: no CUDA GPU is visible ({why}); use {flag} cpu")


def _check_tables_or_close(reader: SlideReader) -> None:
    """The file's TIFF tile tables hold the image its header claims (``integrity.check_segment_tables``)."""
    from .integrity import check_segment_tables

    try:
        check_segment_tables(reader)
    except SlideError:
        reader.close()
        raise


def open_slide(
    path: str | Path, backend: str = "auto", *, slide_mpp: float | None = None, device: str = "cpu"
) -> SlideReader:
    """Open ``path`` with ``backend`` (``auto``, ``cucim``, ``openslide`` or ``tifffile``).

    ``slide_mpp`` is the level-0 microns per pixel to use when the metadata has none
    (the CLI's ``--slide-mpp``); a value in the metadata always wins. ``device="cuda"``
    opens it with cuCIM decoding on the GPU (cuCIM required: an error says so otherwise).
    """
    path = Path(path)
    check_decode_device(device, backend, "device")
    if device == "cuda":
        return _open_for_gpu(path, backend, slide_mpp)
    if not path.exists():
        if path.is_symlink():
            raise SlideError(f"{path.name}: a symbolic link to {os.readlink(path)}, which does not exist")
        raise SlideError(f"{path}: no such file")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise SlideError(f"{path}: is a folder, not a slide file")
    if slide_mpp is not None and not slide_mpp > 0:
        raise ValueError(f"slide_mpp must be a positive number of microns per pixel, got {slide_mpp}")
    vendor = detect_vendor(path)
    if backend == "auto":
        order = _auto_order(vendor)
        if not order:
            raise SlideError(f"{path.name}: no slide backend is installed; pip install -e '.[slides]'")
    else:
        _reader_class(backend)  # validates the name
        order = [backend]
    errors = []
    for name in order:
        try:
            reader = _reader_class(name)(path)
        except ImportError:
            if backend != "auto":
                raise
            continue
        except SlideError as error:
            errors.append(f"{name}: {str(error).removeprefix(path.name + ': ')}")
            continue
        _check_tables_or_close(reader)
        if name == "cucim" and vendor not in ("aperio", "philips"):
            try:
                check_cucim_colours(reader)
            except SlideError as error:
                reader.close()
                if backend != "auto":
                    raise
                errors.append(f"cucim: {error}")
                continue
        if reader.mpp_info is None and slide_mpp is not None:
            reader.mpp_info = MppInfo(float(slide_mpp), float(slide_mpp), "--slide-mpp")
        return reader
    raise SlideError(f"{path.name}: unknown, unsupported or corrupt slide file ({'; '.join(errors)})")


def _open_for_gpu(path: Path, backend: str, slide_mpp: float | None) -> SlideReader:
    """``open_slide`` for ``device="cuda"``: cuCIM only, refused where auto would not pick cuCIM."""
    vendor = detect_vendor(path)
    if backend == "auto" and "cucim" not in _auto_order(vendor):
        raise SlideError(
            f"{path.name}: GPU decoding needs the cuCIM backend, which does not read this format "
            f"({vendor or 'not an OpenSlide format'}); decode it on the CPU (--decode-device cpu)"
        )
    from .cucim_reader import CuCIMReader

    reader = CuCIMReader(path, device="cuda")
    _check_tables_or_close(reader)
    if vendor not in ("aperio", "philips"):
        try:
            check_cucim_colours(reader)
        except SlideError as error:
            reader.close()
            raise SlideError(f"{error}; GPU decoding needs cuCIM, so decode this file on the CPU") from error
    if reader.mpp_info is None and slide_mpp is not None:
        reader.mpp_info = MppInfo(float(slide_mpp), float(slide_mpp), "--slide-mpp")
    return reader
