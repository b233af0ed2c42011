"""Train straight from slides: patches read on the fly at tiler (or CLAM) coordinates.

``SlidePatchDataset(source, transform=None, return_coords=False)`` where ``source`` is a
resolved DATA (:class:`~clusiam_fast.data.resolve.DataArg`, taken as it is: its
``slide_dir`` too) or one of these, resolved once here:

- a tiler ``manifest.csv`` (or the folder holding it): slide paths, levels, read and
  output sizes and the backend all come from the manifest;
- CLAM or TRIDENT coordinate files made elsewhere: one ``.h5`` path, a list of them, or a
  folder of them (e.g. CLAM's ``RESULTS/patches``, or a CLAM / TRIDENT results folder
  holding ``patches/``). The convention is told from the attributes
  (``clusiam_fast.formats.coords_h5.read_patch_geometry``): a CLAM file is read as CLAM
  reads it (``patch_size`` px of ``patch_level``) and resized to our ``output_size``
  when the file has it, else to 224 (CLAM's ``--target_patch_size``); a TRIDENT file
  covers ``patch_size_level0`` level-0 px, read from the coarsest level not coarser
  than its target (chosen when the slide is opened) and resized to its ``patch_size``.
  ``output_size=N`` resizes either to N. Its slide is, in order:
  ``slide_paths[slide_id]`` (a dict keyed by slide id = h5 file stem, less TRIDENT's
  ``_patches``, or a list parallel to the h5 files); the ``slide_path`` attribute our
  tiler stores; a file named ``<slide_id>.<slide extension>`` in ``slide_dir``, the h5
  file's folder or its parent.

A slide whose file is missing (or cannot be found) is skipped with one warning naming it
(and, for h5 input, the places searched); ``dataset.missing_slides`` lists them
(``slide_id``, ``slide_path``, ``h5_path``, ``reason``) so callers can report them. Only
when every slide is missing is it an error. A slide file that cannot be opened is tried
once per process: its later patches fail at once with the same error. A patch whose field of
view lies more than half a patch outside level 0 (coordinates made for another slide, or by
hand) raises :class:`~clusiam_fast.slides.OffSlideError` naming it: extraction leaves it out
and counts it, training replaces it by the next readable patch and reports it.

Items are ``transform(PIL RGB image output_size x output_size)`` (the PIL image itself
when ``transform`` is None), or ``(item, (slide_index, x, y))`` with ``return_coords``
(``x, y`` level-0, ``slide_index`` into ``dataset.slides``).

``decode_device="cuda"`` decodes patches with cuCIM on the GPU (cuCIM backend and a visible GPU
required; :func:`~clusiam_fast.slides.check_decode_device` says what is missing). Items stay PIL
images (the torchvision recipe runs on the host, so each patch comes back once); :meth:`read_batch`
gives the GPU-resident batch itself, which the DALI loader and ``extract --loader dali`` use.

Coordinates are loaded once at construction (no per-item HDF5 access). Slide readers are
opened lazily in the process that reads (DataLoader workers each open their own; at most
``max_open_slides`` stay open per process) and are never pickled. With a DataLoader, a
batch is fetched through ``__getitems__``: patches of the same slide are read together
by the backend's batched multi-threaded reader.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from ..slides import (
    SLIDE_EXTENSIONS,
    OffSlideError,
    SlideReader,
    available_backends,
    check_decode_device,
    iter_patches,
    open_slide,
    patch_image,
)
from .resolve import DataArg, as_data_arg


@dataclass
class SlideInfo:
    """One slide of a :class:`SlidePatchDataset` (attributes, or ``info["slide_id"]``)."""

    slide_id: str
    path: Path
    coords: np.ndarray  # (N, 2) int64 level-0 x, y
    read_level: int
    read_size: int
    output_size: int
    backend: str = "auto"
    h5_path: Path | None = None
    mpp: float | None = None
    target_mpp: float | None = None
    coords_format: str = "clam"
    level0_size: float | None = None  # patch side in level-0 px
    level_chosen: bool = True  # False: read_level/read_size are chosen when the slide opens (TRIDENT files)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def num_patches(self) -> int:
        return len(self.coords)


def _find_slide(slide_id: str, h5_path: Path, slide_dir: str | Path | None) -> Path:
    places = [Path(slide_dir)] if slide_dir else []
    places += [h5_path.parent, h5_path.parent.parent]
    for place in places:
        if not place.is_dir():
            continue
        for candidate in sorted(place.iterdir()):
            name = candidate.name
            if name.lower().endswith(SLIDE_EXTENSIONS) and name[: -len(name.split(".")[-1]) - 1] in (
                slide_id,
                slide_id + ".ome",
            ):
                return candidate
    raise FileNotFoundError(
        f"{h5_path}: no slide found for it (looked for {slide_id}.<{'|'.join(e[1:] for e in SLIDE_EXTENSIONS)}> in "
        f"{', '.join(str(p) for p in places)}); pass slide_paths={{'{slide_id}': PATH}} or slide_dir=FOLDER"
    )


def _fit_read_level(info: SlideInfo, reader: SlideReader) -> None:
    """TRIDENT files name no level: read from the coarsest one not coarser than the target (same field of view)."""
    from ..formats.coords_h5 import choose_read_level

    if not info.level_chosen and info.level0_size:
        info.read_level, info.read_size = choose_read_level(
            info.level0_size, info.output_size, reader.level_downsamples
        )
        info.level_chosen = True


def _fit(region, size: int):
    """A region resized to ``size`` x ``size``: PIL on the host (as the items), torch on the GPU."""
    if isinstance(region, np.ndarray):
        return np.asarray(patch_image(np.ascontiguousarray(region[:, :, :3]), size))
    if region.shape[0] == region.shape[1] == size:
        return region
    chw = region.permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(chw, size=(size, size), mode="bilinear", antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


class SlidePatchDataset(torch.utils.data.Dataset):
    """Patches of many slides, read on the fly (see the module docstring)."""

    def __init__(
        self,
        manifest_or_h5_list: DataArg | str | os.PathLike | Sequence[str | os.PathLike],
        transform: Callable | None = None,
        return_coords: bool = False,
        *,
        slide_paths: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] | None = None,
        slide_dir: str | os.PathLike | None = None,
        backend: str | None = None,
        output_size: int | None = None,
        read_threads: int = 2,
        max_open_slides: int = 16,
        decode_device: str = "cpu",
    ) -> None:
        self.transform = transform
        self.decode_device = decode_device
        self.return_coords = return_coords
        self.read_threads = read_threads
        self.max_open_slides = max(1, max_open_slides)
        data = as_data_arg(
            manifest_or_h5_list, accept=("manifest", "coords"), what="slide patches", slide_dir=slide_dir
        )
        self.missing_slides: list[dict[str, str]] = []
        if data.kind == "manifest":
            self.slides = self._from_manifest(data.path, data.slide_dir, self.missing_slides)
        else:
            self.slides = self._from_h5(list(data.files), slide_paths, data.slide_dir, self.missing_slides)
        if self.missing_slides:
            reasons = [m["reason"] for m in self.missing_slides]
            if not self.slides:
                detail = reasons[0] if len(reasons) == 1 else f"{len(reasons)} slides, e.g. {reasons[0]}"
                raise FileNotFoundError(f"every slide is missing: {detail}")
            more = f" and {len(reasons) - 3} more" if len(reasons) > 3 else ""
            warnings.warn(
                f"{len(reasons)} of {len(reasons) + len(self.slides)} slides are missing and are skipped: "
                f"{'; '.join(reasons[:3])}{more}",
                stacklevel=2,
            )
        installed = set(available_backends())
        for info in self.slides:
            if backend is not None:
                info.backend = backend
            elif info.backend not in installed or decode_device == "cuda":
                info.backend = "auto"  # cuda: cuCIM, or an error naming the slide cuCIM cannot decode
            if output_size is not None:
                info.output_size = int(output_size)
        check_decode_device(decode_device, backend or "auto")
        counts = np.array([info.num_patches for info in self.slides], np.int64)
        self._ends = np.cumsum(counts)
        if not len(self.slides) or self._ends[-1] == 0:
            raise ValueError(f"{data.path}: no patches to read (no slides, or no coordinates in them)")
        self._readers: OrderedDict[int, SlideReader] = OrderedDict()
        self._open_errors: dict[int, str] = {}
        self._pid = os.getpid()

    # -- construction ----------------------------------------------------------------------
    @staticmethod
    def _from_manifest(path: Path, slide_dir: str | os.PathLike | None, missing: list[dict]) -> list[SlideInfo]:
        from ..formats.coords_h5 import read_coords_h5, read_patch_geometry
        from ..formats.manifest import read_manifest

        slides = []
        for row in read_manifest(path):
            slide = Path(row["slide_path"])
            if not slide.exists() and slide_dir is not None and (Path(slide_dir) / slide.name).exists():
                slide = Path(slide_dir) / slide.name
            if not slide.exists():
                looked = f" (nor {Path(slide_dir) / slide.name})" if slide_dir is not None else ""
                missing.append(
                    {
                        "slide_id": str(row["slide_id"]),
                        "slide_path": str(row["slide_path"]),
                        "h5_path": str(row.get("h5_path", "")),
                        "reason": f"{path}: slide {row['slide_path']} of {row['slide_id']} does not exist{looked}; "
                        "pass slide_dir=FOLDER (--slide-dir) if the slides moved",
                    }
                )
                continue
            coords, attrs = read_coords_h5(row["h5_path"])
            geometry = read_patch_geometry(attrs)
            slides.append(
                SlideInfo(
                    slide_id=row["slide_id"],
                    path=slide,
                    coords=coords,
                    read_level=int(row.get("read_level", geometry.read_level)),
                    read_size=int(row.get("read_size", geometry.read_size)),
                    output_size=int(row.get("patch_size", geometry.output_size)),
                    backend=row.get("backend") or "auto",
                    h5_path=Path(row["h5_path"]),
                    mpp=row.get("mpp"),
                    target_mpp=row.get("target_mpp"),
                    coords_format=geometry.coords_format,
                    level0_size=geometry.level0_size,
                )
            )
        return slides

    @staticmethod
    def _from_h5(files: list[Path], slide_paths: Any, slide_dir: Any, missing: list[dict]) -> list[SlideInfo]:
        from ..formats.coords_h5 import read_coords_h5, read_patch_geometry

        if slide_paths is not None and not isinstance(slide_paths, Mapping):
            slide_paths = list(slide_paths)
            if len(slide_paths) != len(files):
                raise ValueError(f"slide_paths has {len(slide_paths)} entries for {len(files)} h5 files")
        slides = []
        for i, h5_path in enumerate(files):
            coords, attrs = read_coords_h5(h5_path)
            slide_id = h5_path.stem
            if attrs["coords_format"] == "trident" and slide_id == f"{attrs['name']}_patches":
                slide_id = str(attrs["name"])  # TRIDENT's <name>_patches.h5
            if isinstance(slide_paths, list):
                slide = Path(slide_paths[i])
            elif isinstance(slide_paths, Mapping) and (slide_id in slide_paths or str(h5_path) in slide_paths):
                slide = Path(slide_paths.get(slide_id) or slide_paths[str(h5_path)])
            elif attrs.get("slide_path") and Path(attrs["slide_path"]).exists():
                slide = Path(attrs["slide_path"])
            else:
                try:
                    slide = _find_slide(slide_id, h5_path, slide_dir)
                except FileNotFoundError as error:
                    missing.append(
                        {"slide_id": slide_id, "slide_path": "", "h5_path": str(h5_path), "reason": str(error)}
                    )
                    continue
            if not slide.exists():
                missing.append(
                    {
                        "slide_id": slide_id,
                        "slide_path": str(slide),
                        "h5_path": str(h5_path),
                        "reason": f"{h5_path}: its slide {slide} does not exist",
                    }
                )
                continue
            geometry = read_patch_geometry(attrs)
            slides.append(
                SlideInfo(
                    slide_id=slide_id,
                    path=slide,
                    coords=coords,
                    read_level=geometry.read_level,
                    read_size=geometry.read_size,
                    output_size=geometry.output_size,
                    backend=str(attrs.get("backend", "auto")),
                    h5_path=h5_path,
                    mpp=attrs.get("mpp"),
                    target_mpp=attrs.get("target_mpp"),
                    coords_format=geometry.coords_format,
                    level0_size=geometry.level0_size,
                    level_chosen=geometry.coords_format != "trident",
                )
            )
        return slides

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._ends[-1])

    def locate(self, index: int) -> tuple[int, int, int]:
        """``(slide_index, x, y)`` of item ``index``."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patches")
        slide = int(np.searchsorted(self._ends, index, side="right"))
        start = int(self._ends[slide - 1]) if slide else 0
        x, y = self.slides[slide].coords[index - start]
        return slide, int(x), int(y)

    def reader(self, slide_index: int) -> SlideReader:
        """The open reader of a slide in this process (opened on first use)."""
        if self._pid != os.getpid():  # forked worker: never share the parent's file handles
            self._readers = OrderedDict()
            self._open_errors = {}
            self._pid = os.getpid()
        reader = self._readers.get(slide_index)
        if reader is None:
            info = self.slides[slide_index]
            if slide_index in self._open_errors:  # tried once already: do not reopen per patch
                raise OSError(self._open_errors[slide_index])
            try:
                reader = open_slide(info.path, info.backend, device=self.decode_device)
            except Exception as error:
                self._open_errors[slide_index] = f"cannot open slide {info.path}: {type(error).__name__}: {error}"
                raise OSError(self._open_errors[slide_index]) from error
            self._readers[slide_index] = reader
            _fit_read_level(info, reader)
            while len(self._readers) > self.max_open_slides:
                self._readers.popitem(last=False)[1].close()
        else:
            self._readers.move_to_end(slide_index)
        return reader

    def _refuse_off_slide(self, slide_index: int, reader: SlideReader, locations: Sequence[Sequence[int]]) -> None:
        """:class:`OffSlideError` naming the first patch whose field of view lies off the slide (see ``off_slide``)."""
        info = self.slides[slide_index]
        off = reader.off_slide(locations, info.read_level, info.read_size)
        if off.any():
            x, y = (int(v) for v in locations[int(np.argmax(off))])
            side = round(info.read_size * reader.level_downsamples[info.read_level])
            width, height = reader.dimensions
            raise OffSlideError(
                f"{info.slide_id} patch at ({x}, {y}): its {side} px field of view lies more than half a patch "
                f"outside the slide ({width} x {height} px at level 0); check the coordinates"
                f"{f' in {info.h5_path}' if info.h5_path else ''}"
            )

    def _item(self, region, where: tuple[int, int, int]) -> Any:
        if not isinstance(region, np.ndarray):  # decoded on the GPU: the PIL recipe runs on the host
            region = region.cpu().numpy()
        image = patch_image(region, self.slides[where[0]].output_size)
        item = self.transform(image) if self.transform is not None else image
        return (item, where) if self.return_coords else item

    def __getitem__(self, index: int) -> Any:
        where = self.locate(index)
        reader = self.reader(where[0])  # first: opening may choose the read level (TRIDENT files)
        info = self.slides[where[0]]
        self._refuse_off_slide(where[0], reader, [where[1:]])
        region = self._read(reader, [where[1:]], info)[0]
        return self._item(region, where)

    def _read(self, reader: SlideReader, locations: Sequence[Sequence[int]], info: SlideInfo) -> list:
        """One slide's regions at ``read_size``: numpy (CPU decode) or torch CUDA (cuCIM GPU decode), batched."""
        batches = iter_patches(
            reader,
            locations,
            info.read_level,
            info.read_size,
            self.decode_device,
            num_workers=self.read_threads,
            batch_size=len(locations),
        )
        return [region for batch in batches for region in batch]

    def _regions(self, places: list[tuple[int, int, int]]) -> list:
        """The regions at ``places``: each slide's read together (batched, multi-threaded; on the GPU: one
        batched ROI decode). A patch off its slide raises; the caller then reads item by item, naming it."""
        regions: list = [None] * len(places)
        by_slide: dict[int, list[int]] = {}
        for k, (slide, _, _) in enumerate(places):
            by_slide.setdefault(slide, []).append(k)
        for slide, ks in by_slide.items():
            reader, info = self.reader(slide), self.slides[slide]
            locations = [places[k][1:] for k in ks]
            self._refuse_off_slide(slide, reader, locations)
            for k, region in zip(ks, self._read(reader, locations, info)):
                regions[k] = region
        return regions

    def read_batch(self, indices: Sequence[int]) -> list:
        """Patches ``indices`` as HWC uint8 arrays of ``output_size`` (numpy, or torch CUDA with cuda decode).

        The CPU form is exactly the pixels of the PIL items; the GPU form is resized on the GPU
        (antialiased bilinear) only where ``read_size`` differs from ``output_size``."""
        places = [self.locate(int(i)) for i in indices]
        return [_fit(r, self.slides[p[0]].output_size) for r, p in zip(self._regions(places), places)]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A batch: each slide's patches read together (batched, multi-threaded)."""
        places = [self.locate(int(i)) for i in indices]
        return [self._item(region, where) for region, where in zip(self._regions(places), places)]

    def close(self) -> None:
        """Close the readers this process opened."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()  # readers never travel; each process opens its own
        state["_open_errors"] = {}
        return state

    def __repr__(self) -> str:
        return f"SlidePatchDataset({len(self.slides)} slides, {len(self)} patches)"
