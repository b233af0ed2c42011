"""Patch sources for extraction: a tiler manifest or coordinate files (patches read from slides), or an image folder.

Each source is a dataset over all patches plus the list of its "slides" (bags), each a
contiguous index range. What a bag is:

- tiler manifest: one bag per slide (row of ``manifest.csv``), with level-0 coordinates.
- CLAM / TRIDENT coordinate files (``.h5`` files, a folder of them, or a results folder
  holding ``patches/``; see :mod:`clusiam_fast.data.resolve`): one bag per file, its
  slide found beside the files or in ``slide_dir`` (``--slide-dir``), each file read in
  its own convention (:mod:`clusiam_fast.data.slide_dataset`).
- image folder: one bag per folder that directly holds images, named by its path
  relative to DATA (``DATA/slide_a/*.png`` -> bag ``slide_a``; PCam's
  ``pcam/train/0/*.jpg`` -> bags ``train/0``, ...); images directly inside DATA form a
  bag named after DATA itself. Each bag keeps its image paths, relative to DATA.

Items are ``(tensor | None, index, error | None)``: an unreadable patch is reported by
name and dropped from its bag instead of stopping the run (see :func:`collate_patches`).

Patch sizes: ``source.sizes`` maps each (width, height) to how many patches have it and
one example (image headers of a folder; output sizes of the slides), and
``source.fit(size)`` makes every patch ``size`` x ``size`` before the transform, so that
folders mixing 224 px and 256 px patches can be stacked into batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.patch_folder import load_rgb
from ..data.resolve import PATCH_KINDS, DataArg, DataLike, as_data_arg
from ..data.tolerant import TolerantDataset
from ..formats.manifest import read_manifest


@dataclass
class SlideEntry:
    """One bag: the index range [start, stop) of its patches in the source's dataset."""

    slide_id: str
    start: int
    stop: int
    coords: np.ndarray | None = None
    paths: list[str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PatchSource:
    kind: str
    dataset: torch.utils.data.Dataset
    slides: list[SlideEntry]
    root: Path
    sizes: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    missing_slides: list[dict[str, str]] = field(default_factory=list)
    fit: Callable[[int], None] = lambda size: None
    patches: Any = None  # slides: the SlidePatchDataset, whose read_batch gives raw patches (extract --loader dali)

    def describe_sizes(self) -> str:
        """``224x224: 3 patches, e.g. a.png; 256x256: 2 patches, e.g. b.png``."""
        return "; ".join(
            f"{w}x{h}: {v['count']} patches, e.g. {v['example']}" for (w, h), v in sorted(self.sizes.items())
        )

    def item_name(self, index: int) -> str:
        """A human-readable name of patch ``index`` (file path or slide@x,y)."""
        for s in self.slides:
            if s.start <= index < s.stop:
                if s.paths is not None:
                    return s.paths[index - s.start]
                if s.coords is not None:
                    x, y = s.coords[index - s.start]
                    return f"{s.slide_id}@{int(x)},{int(y)}"
                return f"{s.slide_id}#{index - s.start}"
        return f"#{index}"


def _image_of(ds: Any, i: int) -> Tensor:
    """The image of item ``i`` (items may be ``(image, coords)``)."""
    item = ds[i]
    return item[0] if isinstance(item, (tuple, list)) else item


def collate_patches(
    items: list[tuple[Tensor | None, int, str | None]],
) -> tuple[Tensor | None, Tensor, list[tuple[int, str]]]:
    """Stack the good patches; return (images or None, their indices, [(index, error)] of failures)."""
    good = [(x, i) for x, i, err in items if err is None]
    failed = [(i, err) for _, i, err in items if err is not None]
    shapes = sorted({tuple(x.shape) for x, _ in good})
    if len(shapes) > 1:
        raise ValueError(
            f"patches of different sizes in one batch ({' and '.join('x'.join(map(str, s)) for s in shapes)}); "
            "pass --resize N --crop N to give every patch one size"
        )
    images = torch.stack([x for x, _ in good]) if good else None
    return images, torch.tensor([i for _, i in good], dtype=torch.long), failed


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], transform: Callable) -> None:
        self.paths, self.transform = paths, transform
        self.size: int | None = None  # every image resized to size x size first (mixed patch sizes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        img = load_rgb(self.paths[index])
        if self.size is not None and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return self.transform(img)


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header (no decoding), or None when it cannot be read (reported later)."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagewidth), int(page.imagelength)
        except Exception:
            return None


def image_sizes(paths: list[Path], names: list[str], threads: int = 8) -> dict[tuple[int, int], dict[str, Any]]:
    """(width, height) -> {count, example} over the image headers."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = list(pool.map(_image_size, paths, chunksize=64))
    sizes: dict[tuple[int, int], dict[str, Any]] = {}
    for size, name in zip(found, names):
        if size is not None:
            entry = sizes.setdefault(size, {"count": 0, "example": name})
            entry["count"] += 1
    return sizes


def folder_source(data: DataArg, transform: Callable) -> PatchSource:
    """The images of DATA resolved to a folder, one bag per folder that holds them (see module docstring)."""
    root, images = data.path, list(data.files)
    rel = [p.relative_to(root) for p in images]
    order = sorted(range(len(images)), key=lambda i: (rel[i].parent.as_posix(), rel[i].as_posix()))
    images, rel = [images[i] for i in order], [rel[i] for i in order]
    slides: list[SlideEntry] = []
    for i, r in enumerate(rel):
        bag = r.parent.as_posix() if r.parent != Path(".") else root.name
        if not slides or slides[-1].slide_id != bag:
            slides.append(SlideEntry(bag, i, i, paths=[], attrs={"source": "folder", "data_root": str(root.resolve())}))
        slides[-1].stop = i + 1
        slides[-1].paths.append(r.as_posix())
    files = _ImageFiles(images, transform)

    def fit(size: int) -> None:
        files.size = int(size)

    sizes = image_sizes(images, [r.as_posix() for r in rel])
    return PatchSource("folder", TolerantDataset(files), slides, root, sizes=sizes, fit=fit)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def _manifest_attrs(row: dict[str, Any], manifest: Path) -> dict[str, Any]:
    attrs: dict[str, Any] = {"source": "manifest", "manifest": str(manifest.resolve())}
    for key in (
        "slide_path",
        "mpp",
        "target_mpp",
        "patch_size",
        "read_level",
        "read_size",
        "backend",
        "thumbnail",
        "h5_path",
    ):
        if row.get(key) not in ("", None):
            attrs[key] = row[key]
    return attrs


def manifest_source(
    data: DataArg, transform: Callable, *, reader: str | None = None, decode_device: str = "cpu"
) -> PatchSource:
    """Patches read on the fly from the slides of a tiler ``manifest.csv`` (DATA resolved to one);
    ``reader``: ``--reader`` (None or auto: each slide's own backend).

    ``data.slide_dir``: where to look for slides that are no longer at the manifest's paths.
    Slides that are missing anyway are skipped (``source.missing_slides``)."""
    from ..data.slide_dataset import SlidePatchDataset

    manifest = data.path
    rows = {row["slide_id"]: row for row in read_manifest(manifest)}
    inner = SlidePatchDataset(
        data, transform=transform, return_coords=False, backend=_backend(reader), decode_device=decode_device
    )
    return _slide_source(
        "manifest",
        inner,
        manifest.parent,
        lambda info: {**_manifest_attrs(rows.get(info.slide_id, {}), manifest), "backend": info.backend},  # --reader
    )


def coords_source(
    data: DataArg, transform: Callable, *, reader: str | None = None, decode_device: str = "cpu"
) -> PatchSource:
    """Patches read on the fly at the coordinates of CLAM / TRIDENT ``.h5`` files (DATA resolved to them; one bag
    per file); ``reader``: ``--reader`` (None or auto: each slide's own backend).

    The slides are looked for beside the files and in ``data.slide_dir``; when none is found
    the error names ``--slide-dir``. Slides missing among found ones are skipped
    (``source.missing_slides``)."""
    from ..data.slide_dataset import SlidePatchDataset

    root, files, slide_dir = data.path, data.files, data.slide_dir
    try:
        inner = SlidePatchDataset(
            data, transform=transform, return_coords=False, backend=_backend(reader), decode_device=decode_device
        )
    except FileNotFoundError as error:
        where = f"nor in --slide-dir {slide_dir}" if slide_dir is not None else "and no --slide-dir was given"
        raise FileNotFoundError(
            f"{root}: {len(files)} patch coordinate file(s), but none of their slides was found beside them {where}; "
            f"pass --slide-dir FOLDER, the folder holding the slide files ({error})"
        ) from error

    def attrs(info) -> dict[str, Any]:
        if not info.level_chosen:  # TRIDENT files name no level: open the slide, so the bag gives the one read
            try:
                inner.reader(inner.slides.index(info))
            except OSError:
                pass  # the slide's reads fail later, and name it
        found = {
            "source": "coords",
            "coords_format": info.coords_format,
            "h5_path": str(Path(info.h5_path).resolve()),
            "slide_path": str(info.path),
            "patch_size": info.output_size,
            "read_level": info.read_level,
            "read_size": info.read_size,
            "backend": info.backend,
            "level0_size": info.level0_size,
            "mpp": info.mpp,
            "target_mpp": info.target_mpp,
        }
        return {k: v for k, v in found.items() if v is not None}

    return _slide_source("coords", inner, Path(root), attrs)


def _slide_source(kind: str, inner, root: Path, attrs_of: Callable) -> PatchSource:
    """A :class:`PatchSource` over a ``SlidePatchDataset``: one bag per slide, its output size fit on demand."""
    slides: list[SlideEntry] = []
    start = 0
    for info in inner.slides:
        slide_id = str(_get(info, "slide_id"))
        coords = np.asarray(_get(info, "coords"), dtype=np.int64).reshape(-1, 2)
        slides.append(SlideEntry(slide_id, start, start + len(coords), coords=coords, attrs=attrs_of(info)))
        start += len(coords)
    if start != len(inner):
        raise RuntimeError(
            f"{root}: the slide dataset has {len(inner)} patches but its slides list {start} coordinates"
        )

    sizes: dict[tuple[int, int], dict[str, Any]] = {}
    for info, entry in zip(inner.slides, slides):
        size = sizes.setdefault(
            (info.output_size, info.output_size), {"count": 0, "example": f"slide {entry.slide_id}"}
        )
        size["count"] += entry.stop - entry.start

    def fit(size: int) -> None:
        for info in inner.slides:
            info.output_size = int(size)

    return PatchSource(
        kind,
        TolerantDataset(inner, _image_of),
        slides,
        root,
        sizes=sizes,
        missing_slides=list(inner.missing_slides),
        fit=fit,
        patches=inner,
    )


def _backend(reader: str | None) -> str | None:
    """``--reader`` as ``SlidePatchDataset``'s backend: None (auto) keeps each slide's own."""
    return None if reader in (None, "auto") else reader


def open_source(
    data: DataLike,
    transform: Callable,
    *,
    slide_dir: str | Path | None = None,
    reader: str | None = None,
    decode_device: str = "cpu",
) -> PatchSource:
    """The patches of DATA: a tiler manifest, CLAM / TRIDENT coordinate files, or an image folder.

    ``data``: resolved already (:class:`~clusiam_fast.data.resolve.DataArg`, taken as it is), or
    a path resolved here; ``slide_dir``, when given, replaces its ``slide_dir``; ``reader``: ``--reader``;
    ``decode_device="cuda"``: slide patches are decoded by cuCIM on the GPU (slides only)."""
    arg = as_data_arg(data, accept=PATCH_KINDS, slide_dir=slide_dir)
    if arg.kind == "manifest":
        return manifest_source(arg, transform, reader=reader, decode_device=decode_device)
    if arg.kind == "coords":
        return coords_source(arg, transform, reader=reader, decode_device=decode_device)
    if decode_device != "cpu":
        raise ValueError(
            f"--decode-device {decode_device} decodes slide patches with cuCIM; DATA {arg.path} is a folder of "
            "images: use --decode-device cpu"
        )
    if arg.slide_dir is not None:
        import warnings

        warnings.warn(
            f"slide_dir {arg.slide_dir} is ignored: {arg.path} is a folder of images, not a manifest", stacklevel=2
        )
    return folder_source(arg, transform)
