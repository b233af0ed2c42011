"""Folders of image patches: find them, open them as RGB, index them as a dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .resolve import find_images

_EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_TIFF_SUFFIXES = (".tif", ".tiff")


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values of any dtype as uint8, scaled (not clipped) so that the full range maps to 0..255.

    - uint8: unchanged. bool: 0/255.
    - unsigned integers: by the dtype's range (uint16: ``round(v * 255 / 65535)``, so
      65535 -> 255 and 32768 -> 128). Signed integers: by the dtype's positive range when
      no value is negative, else from the dtype's minimum to its maximum. PIL's 32-bit
      mode ``I`` (how Pillow may hold a 16-bit PNG) counts as 16-bit when its values fit
      in 0..65535.
    - floating point: [0, 1] when every value lies in [0, 1]; else
      [0, 255] (8-bit values stored as floats) when they lie in [0, 255]; else [0, 65535]
      when they lie in [0, 65535]; else the observed range (min -> 0, max -> 255). NaN or Inf
      values raise ValueError (the reader names the file and the run counts it as unreadable):
      no pixel value stands for them.
    """
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        lo, hi = (0, info.max) if a.size == 0 or a.min() >= 0 else (info.min, info.max)
        if a.dtype.itemsize >= 4 and a.size and a.min() >= 0 and a.max() <= 65535:
            lo, hi = 0, 65535
        scaled = (a.astype(np.float64) - lo) * (255.0 / (hi - lo))
    else:
        f = a.astype(np.float64)
        if not_finite := int(np.count_nonzero(~np.isfinite(f))):
            raise ValueError(f"{not_finite} of {f.size} pixel values are NaN or Inf")
        lo, hi = (float(f.min()), float(f.max())) if f.size else (0.0, 1.0)
        for top in (1.0, 255.0, 65535.0):
            if lo >= 0 and hi <= top:
                lo, hi = 0.0, top
                break
        scaled = (f - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(f)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _rgb_array(a: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """(H, W) or (H, W, C) pixels as (H, W, 3); alpha is dropped."""
    a = np.asarray(a)
    while a.ndim > 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"unsupported pixel layout {a.shape} (expected gray, gray+alpha, RGB or RGBA)")
    a = a[..., :1] if a.shape[-1] in (1, 2) else a[..., :3]
    return np.ascontiguousarray(np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a)


def _read_tifffile(path: str | os.PathLike) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        a, axes = page.asarray(), page.axes
    if axes.endswith("YX") and "S" in axes and a.ndim >= 3:  # planar (separate) samples: SYX -> YXS
        a = np.moveaxis(a, axes.index("S") - len(axes) + a.ndim, -1)
    return a


def _high_bit_tiff(img: Image.Image) -> bool:
    """A TIFF whose samples PIL would squeeze into 8 bits (e.g. 16-bit RGB) or holds as floats."""
    tags = getattr(img, "tag_v2", None)
    if tags is None:
        return False
    bits = tags.get(258, (8,))
    bits = bits if isinstance(bits, tuple) else (bits,)
    sample_format = tags.get(339, (1,))
    sample_format = sample_format if isinstance(sample_format, tuple) else (sample_format,)
    return any(int(b) > 8 for b in bits) or any(int(f) == 3 for f in sample_format)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB; errors name the file.

    8-bit images go through PIL's ``convert("RGB")``. Deeper images are scaled to 8 bits
    by :func:`to_uint8` (not clipped, so a 16-bit patch is not all white): PIL's 16/32-bit
    gray and float modes (``I;16``, ``I;16B``, ``I``, ``F``), and TIFFs with more than 8
    bits per sample or float samples (16-bit RGB, float32), which are read with tifffile
    -- also whenever PIL cannot open a .tif/.tiff at all.
    """
    is_tiff = str(path).lower().endswith(_TIFF_SUFFIXES)
    try:
        try:
            with Image.open(path) as img:
                if is_tiff and _high_bit_tiff(img):
                    return Image.fromarray(_rgb_array(to_uint8(_read_tifffile(path)), path), "RGB")
                img.load()
                if img.mode in _EIGHT_BIT_MODES:
                    return img.convert("RGB")
                return Image.fromarray(_rgb_array(to_uint8(np.asarray(img)), path), "RGB")
        except (UnidentifiedImageError, OSError, ValueError):
            if not is_tiff:
                raise
            return Image.fromarray(_rgb_array(to_uint8(_read_tifffile(path)), path), "RGB")
    except Exception as error:
        raise OSError(f"cannot read image {path}: {type(error).__name__}: {error}") from error


class PatchFolder(Dataset):
    """Images of a folder (see :func:`find_images`) as PIL RGB images, passed through ``transform``.

    Example::

        ds = PatchFolder("patches/", transform=paper_augmentation(224, mean, std))
    """

    def __init__(self, root_or_paths: str | os.PathLike | list[Path], transform=None) -> None:
        if isinstance(root_or_paths, (str, os.PathLike)):
            self.root: Path | None = Path(root_or_paths)
            self.paths = find_images(root_or_paths)
        else:
            self.root, self.paths = None, [Path(p) for p in root_or_paths]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        img = load_rgb(self.paths[index])
        return img if self.transform is None else self.transform(img)

    def describe(self, index: int) -> str:
        """The file behind item ``index`` (for error reports)."""
        return str(self.paths[index])
