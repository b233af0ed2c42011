"""Tile slides: tissue mask -> patch grid -> coordinate h5 + QA thumbnail (+ tiles) -> manifest.

:func:`tile_slide` does one slide and raises on any problem; :func:`tile_slides` runs a
cohort through :class:`clusiam_fast.cohort.CohortRun` (local processes or Ray; done records, locks,
shards; slides already done are skipped), turns each slide's error into a reported failure,
and rebuilds the manifest of the folder's done slides. Every output file is written under a
temporary name and renamed when complete; a slide's h5 file is written last, then its done
record, so a slide with a done record has all its outputs.

Output folder::

    OUT/manifest.csv                 one row per tiled slide (formats/manifest.py)
    OUT/patches/<slide_id>.h5        coordinates, CLAM's convention (formats/coords_h5.py), or
    OUT/patches/<slide_id>_patches.h5  TRIDENT's with coords_format="trident"
    OUT/thumbnails/<slide_id>.png    QA overlay: contours and patch grid over true colours (tiling/thumbnail.py)
    OUT/contours/<slide_id>.geojson  tissue contours for QuPath; OUT/masks/<slide_id>.png the mask (tiling/contours.py)
    OUT/mosaics/<slide_id>.png       the kept patches stitched at low resolution (tiling/mosaic.py)
    OUT/params/<slide_id>.json       a slide's --slide-params row, one of its inputs (tiling/slide_params.py)
    OUT/slide_params.csv             every slide and its --slide-params (blank: the run's), to edit and pass back
    OUT/summary.md                   what the run did, for people (tiling/summary.py)
    OUT/tiles/<slide_id>/*.jpg|png   only with save_tiles (tiling/export.py)
    OUT/done/<slide_id>.json         done record (cohort/records.py); failed/ for failures
    OUT/locks/<slide_id>.lock        while a job tiles it (cohort/locks.py)
    OUT/cohort.json                  done, failed with reasons, skipped, patches, time

Damaged tile data (found as ``slides/integrity.py`` explains) fails the slide with an error
naming the level-0 region; with ``on_corrupt_tile="skip"`` the patches on it are dropped,
counted in the manifest (``corrupt_patches``), the h5 attributes and the summary.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..cohort import CohortRun, SlideJob, connect_ray
from ..cohort.locks import DEFAULT_TIMEOUT_S
from ..formats.coords_h5 import COORDS_FORMATS, write_coords_h5
from ..formats.manifest import merge_manifest
from ..slides import (
    SLIDE_EXTENSIONS,
    CorruptTileError,
    SlideError,
    check_decode_device,
    open_slide,
    slide_id_from_path,
)
from .contours import save_contours, save_mask
from .export import FORMATS, export_tiles
from .grid import grid_coords, mask_downsample, patch_boxes, plan_read
from .mosaic import save_mosaic, stitch_mosaic
from .slide_params import apply_slide_params, load_params, params_files, write_params_template
from .summary import write_run_summary
from .thumbnail import draw_qa_thumbnail, save_qa_thumbnail
from .tissue import TissueParams, detect_tissue, tissue_fractions

# What the fork server imports before it forks the workers (this module and the libraries it imports on
# first use): worker_imports.py, which the tile CLI names to start the server early.
WORKER_PRELOAD = (f"{__package__}.worker_imports",)


class NoTissueError(SlideError):
    """No grid patch has enough tissue."""


@dataclass(frozen=True)
class TileConfig:
    """Everything that decides how slides are cut (the CLI flags)."""

    target_mpp: float = 0.5
    patch_size: int = 224
    stride: int | None = None  # None: = patch_size (no overlap)
    min_tissue: float = 0.5
    slide_mpp: float | None = None  # used for slides whose metadata has no mpp
    backend: str = "auto"
    save_tiles: str = "none"  # none | jpg | png
    read_threads: int = 2
    tissue: TissueParams = field(default_factory=TissueParams)
    qa_max_side: int = 1024
    on_corrupt_tile: str = "fail"  # fail | skip (drop the patches on damaged tile data, counted)
    decode_device: str = "cpu"  # cpu | cuda: where --save-tiles decodes patch pixels (cuda: cuCIM)
    coords_format: str = "clam"  # clam | trident: the convention of patches/*.h5 (formats/coords_h5.py)

    def __post_init__(self) -> None:
        if self.coords_format not in COORDS_FORMATS:
            raise ValueError(f"--coords-format must be clam or trident, got {self.coords_format!r}")
        if self.on_corrupt_tile not in ("fail", "skip"):
            raise ValueError(f"--on-corrupt-tile must be fail or skip, got {self.on_corrupt_tile!r}")
        if self.decode_device != "cpu":
            check_decode_device(self.decode_device, self.backend)
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"--min-tissue must be within [0, 1], got {self.min_tissue}")
        if self.save_tiles != "none" and self.save_tiles not in FORMATS:
            raise ValueError(f"--save-tiles must be none, jpg or png, got {self.save_tiles!r}")
        if self.target_mpp <= 0 or (self.slide_mpp is not None and self.slide_mpp <= 0):
            raise ValueError("--mpp and --slide-mpp must be positive microns per pixel")
        if self.patch_size < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError("--patch-size and --stride must be positive")


@dataclass
class SlideFailure:
    """A slide that could not be tiled, and why."""

    path: Path
    error: str


@dataclass
class TilingReport:
    """What :func:`tile_slides` did."""

    rows: list[dict[str, Any]]
    failures: list[SlideFailure]
    manifest: Path
    kept: int = 0  # rows of earlier runs (or other jobs) kept in the merged manifest
    skipped: int = 0  # slides found done (done records) and not tiled again
    elsewhere: list[str] = field(default_factory=list)  # slides another job sharing the folder did or is doing

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        total = len(self.rows) + len(self.failures)
        patches = sum(int(r["num_patches"]) for r in self.rows)
        lines = [f"tiled {len(self.rows)} of {total} slides ({patches} patches) -> {self.manifest}"]
        dropped = [r for r in self.rows if int(r.get("corrupt_patches") or 0)]
        if dropped:
            lines.append(f"{len(dropped)} slide(s) with patches dropped on corrupt tile data (--on-corrupt-tile skip):")
            lines += [f"  {r['slide_id']}: {r['corrupt_patches']} patch(es) dropped" for r in dropped]
        if self.skipped:
            lines.append(f"skipped {self.skipped} slide(s) already tiled into this folder (--redo tiles them again)")
        if self.elsewhere:
            lines.append(
                f"left {len(self.elsewhere)} slide(s) to another job sharing this folder (locked or done by it)"
            )
        if self.kept:
            lines.append(f"manifest also lists {self.kept} slide(s) tiled earlier into this folder")
        if self.failures:
            lines.append(f"{len(self.failures)} slide(s) failed:")
            lines += [f"  {f.path.name}: {f.error}" for f in self.failures]
        return "\n".join(lines)


def find_slides(inputs: Iterable[str | Path]) -> tuple[list[Path], list[SlideFailure]]:
    """Slide files named or found in folders (not their subfolders), and inputs that do not exist.

    A named file is always tried whatever its extension; in a folder only files with a
    slide extension (``SLIDE_EXTENSIONS``) are taken. A folder with no slide is an error.
    Paths are made absolute but symbolic links are not followed: a slide is known by the name
    the user gave (its id is the link's name), and a dangling link is a slide that fails.
    """
    slides: list[Path] = []
    missing: list[SlideFailure] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir() and path.suffix.lower() != ".mrxs":
            found = sorted(
                p
                for p in path.iterdir()
                if (p.is_file() or (p.is_symlink() and not p.exists()))
                and not p.name.startswith(".")
                and p.name.lower().endswith(SLIDE_EXTENSIONS)
            )
            if not found:
                raise FileNotFoundError(f"no slide files ({', '.join(SLIDE_EXTENSIONS)}) in folder {path}")
            slides += found
        elif path.exists() or path.is_symlink():
            slides.append(path)
        else:
            missing.append(SlideFailure(path, "no such file or folder"))
    return [Path(os.path.abspath(p)) for p in slides], missing


def tile_slide(
    path: str | Path, out_dir: str | Path, config: TileConfig = TileConfig(), slide_id: str | None = None
) -> dict[str, Any]:
    """Tile one slide into ``out_dir``; returns its manifest row. Raises on any problem.

    Damaged tile data (:class:`CorruptTileError`) fails the slide, naming the region; with
    ``config.on_corrupt_tile == "skip"`` the patches on it are dropped and counted instead
    (``corrupt_patches`` in the row).
    """
    path = Path(os.path.abspath(path))  # links not followed: the slide keeps the name it was given
    out_dir = Path(out_dir)
    slide_id = slide_id or slide_id_from_path(path)
    skip = config.on_corrupt_tile == "skip"
    device = config.decode_device if config.save_tiles != "none" else "cpu"
    with open_slide(path, config.backend, slide_mpp=config.slide_mpp, device=device) as reader:
        if device == "cuda" and reader.backend != "cucim":
            raise SlideError(
                f"{path.name}: --decode-device cuda needs the cuCIM backend, but this slide opened with "
                f"{reader.backend}; use --decode-device cpu for it"
            )
        mpp = reader.require_mpp()
        plan = plan_read(reader.level_downsamples, mpp, config.target_mpp, config.patch_size, config.stride)
        grid = grid_coords(plan, reader.level_dimensions)
        if len(grid) == 0:
            raise SlideError(f"{path.name}: smaller than one patch ({plan.read_size} px at level {plan.level})")
        corrupt: list[CorruptTileError] | None = [] if skip else None
        view = _tissue_view(reader, plan.footprint, mpp, config, corrupt)
        coords = _tissue_patches(path, grid, _unknown_as_tissue(view, corrupt), plan.footprint, config.min_tissue)
        coords, dropped = _drop_corrupt(reader, coords, plan, corrupt)
        if config.save_tiles != "none":
            coords, lost = _export(reader, coords, plan, out_dir, slide_id, config)
            dropped += lost
        if len(coords) == 0:
            raise CorruptTileError(f"{path.name}: every tissue patch lies on corrupt tile data ({dropped} dropped)")
        return _write_outputs(reader, path, out_dir, slide_id, plan, coords, view, dropped, config)


@dataclass
class _TissueView:
    """The low-resolution picture (for the QA thumbnail) and the tissue mask, with their downsamples."""

    rgb: np.ndarray
    rgb_ds: tuple[float, float]
    mask: np.ndarray
    mask_ds: tuple[float, float]


def _tissue_view(
    reader, footprint: float, mpp: float, config: TileConfig, corrupt: list[CorruptTileError] | None
) -> _TissueView:
    """One low-resolution read serves both the tissue mask and the QA picture."""
    mask_ds = mask_downsample(reader.dimensions, footprint)
    read_ds = max(1.0, min(mask_ds, max(reader.dimensions) / config.qa_max_side))
    rgb, rgb_ds = reader.thumbnail(read_ds, corrupt=corrupt)
    mask_rgb, ds = rgb, rgb_ds
    if mask_ds > read_ds * 1.05:
        from PIL import Image

        w0, h0 = reader.dimensions
        size = (max(1, round(w0 / mask_ds)), max(1, round(h0 / mask_ds)))
        mask_rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        ds = (w0 / size[0], h0 / size[1])
    mask = detect_tissue(mask_rgb, mpp * (ds[0] + ds[1]) / 2, config.tissue)
    return _TissueView(rgb, rgb_ds, mask, ds)


def _unknown_as_tissue(view: _TissueView, corrupt: list[CorruptTileError] | None) -> _TissueView:
    """The view with the damaged regions of the thumbnail counted as tissue (skip mode).

    Their pixels are unknown (painted white); counting them as tissue lets the patches over
    them be selected and then dropped as corrupt, so that they are counted, not silently lost.
    """
    if not corrupt:
        return view
    mask = view.mask.copy()
    dsx, dsy = view.mask_ds
    for error in corrupt:
        x, y, w, h = error.region
        mask[int(y // dsy) : int(math.ceil((y + h) / dsy)), int(x // dsx) : int(math.ceil((x + w) / dsx))] = True
    return _TissueView(view.rgb, view.rgb_ds, mask, view.mask_ds)


def _tissue_patches(path: Path, grid: np.ndarray, view: _TissueView, footprint: float, min_tissue: float) -> np.ndarray:
    """The grid patches with at least ``min_tissue`` tissue; NoTissueError when there are none."""
    fractions = tissue_fractions(view.mask, patch_boxes(grid, footprint, view.mask_ds))
    coords = grid[fractions >= min_tissue] if min_tissue > 0 else grid
    if len(coords) == 0:
        raise NoTissueError(
            f"{path.name}: no tissue found (none of {len(grid)} grid patches has >= {min_tissue:.0%} "
            f"tissue; tissue covers {view.mask.mean():.1%} of the slide); lower --min-tissue if this is wrong"
        )
    return coords


def _drop_corrupt(reader, coords: np.ndarray, plan, corrupt: list[CorruptTileError] | None) -> tuple[np.ndarray, int]:
    """Check the tile data under every patch; raise on the first damaged one, or (skip) drop them.

    ``corrupt`` (skip mode) holds the damaged regions met while reading the thumbnail; patches
    overlapping those of the patches' own level are dropped too.
    """
    found = reader.find_corrupt(coords, plan.level, plan.read_size)
    if corrupt is None:
        if found:
            error = found[0][1]
            raise CorruptTileError(
                f"{error} [{len(found)} of {len(coords)} tissue patches lie on corrupt tile data; "
                "--on-corrupt-tile skip drops them]",
                error.region,
                error.level,
            )
        return coords, 0
    bad = {i for i, _ in found}
    side = plan.footprint
    for error in corrupt:
        if error.level != plan.level:
            continue
        x, y, w, h = error.region
        hit = (coords[:, 0] < x + w) & (coords[:, 0] + side > x) & (coords[:, 1] < y + h) & (coords[:, 1] + side > y)
        bad.update(np.flatnonzero(hit).tolist())
    keep = np.ones(len(coords), bool)
    keep[sorted(bad)] = False
    return coords[keep], int((~keep).sum())


def _export(reader, coords: np.ndarray, plan, out_dir: Path, slide_id: str, config: TileConfig):
    """``--save-tiles``: write the patch images; returns the coords kept and how many were dropped."""
    skipped = export_tiles(
        reader,
        coords,
        plan,
        out_dir / "tiles" / slide_id,
        slide_id,
        config.save_tiles,
        config.read_threads,
        device=config.decode_device,
        on_corrupt=config.on_corrupt_tile,
    )
    if not skipped:
        return coords, 0
    keep = np.ones(len(coords), bool)
    keep[sorted(skipped)] = False
    return coords[keep], int((~keep).sum())


def _write_outputs(
    reader, path: Path, out_dir: Path, slide_id: str, plan, coords: np.ndarray, view: _TissueView, dropped: int, config
) -> dict[str, Any]:
    """QA thumbnail, then the h5 file (last: a slide with an h5 file has all its outputs); the manifest row."""
    mpp = plan.mpp
    thumbnail = Path("thumbnails") / f"{slide_id}.png"
    title = (
        f"{slide_id}: {len(coords)} patches {plan.patch_size}px @ {plan.target_mpp:g} um/px "
        f"(slide {mpp:.3f} um/px, level {plan.level}, read {plan.read_size}px, {reader.backend})"
    )
    if dropped:
        title += f", {dropped} dropped: corrupt tiles"
    picture = draw_qa_thumbnail(view.rgb, view.rgb_ds, view.mask, coords, plan.footprint, title, config.qa_max_side)
    save_qa_thumbnail(out_dir / thumbnail, picture)
    save_mask(out_dir / "masks" / f"{slide_id}.png", view.mask, view.mask_ds)
    save_contours(out_dir / "contours" / f"{slide_id}.geojson", view.mask, view.mask_ds, slide_id)
    save_mosaic(out_dir / "mosaics" / f"{slide_id}.png", stitch_mosaic(view.rgb, view.rgb_ds, coords, plan.footprint))

    h5_path = Path("patches") / (f"{slide_id}_patches.h5" if config.coords_format == "trident" else f"{slide_id}.h5")
    ours = {
        "mpp": mpp,
        "target_mpp": plan.target_mpp,
        "output_size": plan.patch_size,
        "mpp_source": reader.mpp_info.source if reader.mpp_info else "",
        "slide_path": str(path),
        "backend": reader.backend,
        "corrupt_patches": dropped,
    }
    if config.coords_format == "trident":
        attrs = _trident_attrs(reader, plan, slide_id, out_dir, config.stride or plan.patch_size)
    else:
        attrs = _clam_attrs(reader, plan, slide_id, out_dir)
    write_coords_h5(out_dir / h5_path, coords, {**attrs, **ours}, config.coords_format)
    return {
        "slide_id": slide_id,
        "slide_path": str(path),
        "h5_path": h5_path.as_posix(),
        "num_patches": len(coords),
        "mpp": round(mpp, 6),
        "target_mpp": plan.target_mpp,
        "patch_size": plan.patch_size,
        "read_level": plan.level,
        "read_size": plan.read_size,
        "backend": reader.backend,
        "thumbnail": thumbnail.as_posix(),
        "corrupt_patches": dropped,
        "mpp_source": reader.mpp_info.source if reader.mpp_info else "",  # not a manifest column
    }


def _clam_attrs(reader, plan, slide_id: str, out_dir: Path) -> dict[str, Any]:
    """CLAM's attributes: ``patch_size`` is the px read at ``patch_level``."""
    lw, lh = reader.level_dimensions[plan.level]
    w0, h0 = reader.dimensions
    return {
        "patch_size": plan.read_size,
        "patch_level": plan.level,
        "downsample": (w0 / lw, h0 / lh),
        "level_dim": (lw, lh),
        "downsampled_level_dim": (lw, lh),
        "name": slide_id,
        "save_path": str(out_dir / "patches"),
    }


def _trident_attrs(reader, plan, slide_id: str, out_dir: Path, stride: int) -> dict[str, Any]:
    """TRIDENT's attributes: ``patch_size`` at the target, ``patch_size_level0`` in level-0 px.

    The magnifications are the exact ``10 / mpp`` (TRIDENT's own rounds the slide's to
    40, 20, ...), so that TRIDENT's ``patch_size x level0_magnification /
    target_magnification`` gives the same level-0 size as ``patch_size_level0``.
    """
    w0, h0 = reader.dimensions
    return {
        "patch_size": plan.patch_size,
        "patch_size_level0": round(plan.footprint),
        "level0_magnification": 10.0 / plan.mpp,
        "target_magnification": 10.0 / plan.target_mpp,
        "overlap": plan.patch_size - stride,  # px at the target; negative: gaps between patches
        "name": slide_id,
        "savetodir": str(out_dir),
        "level0_width": w0,
        "level0_height": h0,
    }


def _run_one(path: Path, slide_id: str, out_dir: Path, config: TileConfig) -> tuple[bool, Any]:
    """``tile_slide`` with its error turned into a message naming the file (runs in workers)."""
    try:
        return True, tile_slide(path, out_dir, config, slide_id)
    except Exception as error:  # one bad slide never stops the run
        message = str(error) if isinstance(error, (SlideError, OSError)) else f"{type(error).__name__}: {error}"
        return False, message.removeprefix(f"{path.name}: ")


def _tile_job(job: SlideJob, out_dir: str, config: TileConfig) -> tuple[bool, Any, list[str], list[str]]:
    """One cohort job (``cohort.run_cohort``): (ok, manifest row or reason, outputs relative to OUT, the
    per-slide settings it did not use: ``slide_mpp`` when the slide's metadata gave its mpp)."""
    config = replace(config, slide_mpp=dict(job.settings).get("slide_mpp", config.slide_mpp))
    if len(job.inputs) > 1:  # its --slide-params row
        config = apply_slide_params(config, load_params(job.inputs[1]))
    ok, value = _run_one(Path(job.path), job.slide_id, Path(out_dir), config)
    tissue = [f"masks/{job.slide_id}.png", f"contours/{job.slide_id}.geojson", f"mosaics/{job.slide_id}.png"]
    outputs = [value["h5_path"], value["thumbnail"], *tissue] if ok else []
    if ok and config.save_tiles != "none":
        outputs.append(f"tiles/{job.slide_id}")
    unused = [] if ok and value.get("mpp_source") == "--slide-mpp" else ["slide_mpp"]
    return ok, value, outputs, unused


def tile_settings(config: TileConfig) -> dict[str, Any]:
    """The settings recorded with (and compared against) every done slide: all that changes the outputs,
    less ``slide_mpp``, a per-slide setting (:func:`slide_settings`)."""
    settings = asdict(config)
    for key in ("read_threads", "decode_device", "slide_mpp"):  # how, not what; per slide
        settings.pop(key)
    return settings


def slide_settings(slide_id: str, config: TileConfig, slide_mpps: dict[str, float]) -> tuple[tuple[str, Any], ...]:
    """A slide's own settings: its mpp from the CSV, else ``--slide-mpp`` (used only where the metadata has none,
    and then recorded; a slide done with its metadata mpp is not redone when they change)."""
    return (("slide_mpp", slide_mpps.get(slide_id, config.slide_mpp)),)


def tile_slides(
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    config: TileConfig = TileConfig(),
    workers: int = 1,
    progress: bool = True,
    *,
    engine: str = "local",
    ray_address: str | None = None,
    cpus_per_task: float = 1.0,
    redo: bool = False,
    lock_timeout: float = DEFAULT_TIMEOUT_S,
    shard: tuple[int, int] | None = None,
    slide_mpps: dict[str, float] | None = None,
    slide_params: dict[str, dict[str, Any]] | None = None,
) -> TilingReport:
    """Tile every slide of ``inputs`` (files or folders) into ``out_dir``, ``workers`` at a time.

    Resumable (``clusiam_fast/cohort``): slides with a done record for these inputs and
    settings are skipped (``redo`` forces them; other settings are refused with
    :class:`SettingsChangedError` unless ``redo``); ``shard=(I, N)`` takes part I of N;
    jobs sharing ``out_dir`` lock slides so that none is tiled twice. ``engine``: ``local``
    (``workers`` processes) or ``ray`` (one task per slide, ``cpus_per_task`` CPUs each,
    on ``ray_address`` or a local instance of ``workers x cpus_per_task`` CPUs).
    Failures are collected (never raised). The manifest is rebuilt, under a lock, from the
    done records of ``out_dir`` (plus rows of an older manifest for slides without one).
    ``slide_mpps``: per-slide level-0 mpp (``--slide-mpp-csv``) for slides whose metadata has none.
    ``slide_params``: per-slide parameters (``--slide-params``, :mod:`.slide_params`); ``OUT/summary.md`` tells the run.
    """
    from tqdm.auto import tqdm

    started = time.time()
    out_dir, slide_params = Path(out_dir), slide_params or {}
    paths, failures = find_slides(inputs)
    excluded = {sid for sid, row in slide_params.items() if not row.get("keep", True)}  # --slide-params keep=0
    jobs = _slide_jobs(paths, config, slide_mpps or {}, failures, excluded)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = params_files(out_dir, [j.slide_id for j in jobs], slide_params)  # a slide's row: one of its inputs
    write_params_template(out_dir, [slide_id_from_path(p) for p in paths], slide_params)
    jobs = [replace(j, inputs=(j.path, str(params[j.slide_id]))) if j.slide_id in params else j for j in jobs]
    cohort = CohortRun(
        out_dir,
        "tile",
        jobs,
        tile_settings(config),
        redo=redo,
        shard=shard,
        engine=engine,
        lock_timeout=lock_timeout,
        temp_folders=("patches", "thumbnails", "masks", "contours", "mosaics", "params"),
        started=started,
    )
    if engine == "ray" and cohort.todo:  # before the progress bar: an address that does not answer is one line
        connect_ray(ray_address, workers * cpus_per_task, 0)

    patches = 0
    bar = tqdm(total=len(cohort.todo), unit="slide", desc="tiling", disable=not progress, file=sys.stderr)
    if cohort.plan.skipped:
        bar.write(
            f"skipping {len(cohort.plan.skipped)} slide(s) already tiled into {out_dir} (--redo to tile them again)"
        )
    results = cohort.run(
        _tile_job,
        (str(out_dir), config),
        workers=workers,
        ray_address=ray_address,
        cpus_per_task=cpus_per_task,
        preload=WORKER_PRELOAD,
    )
    for result in results:
        if result.status == "done":
            patches += int(result.value["num_patches"])
        elif result.status == "failed":
            failures.append(SlideFailure(Path(result.job.path), result.value))
            bar.write(f"FAILED {Path(result.job.path).name}: {result.value}", file=sys.stderr)
        bar.update(1)
        bar.set_postfix(patches=patches, failed=len(failures))
    bar.close()
    mine = {r.job.slide_id: r.value for r in cohort.done}
    rows = [mine[j.slide_id] for j in cohort.jobs if j.slide_id in mine]
    manifest, kept = cohort.finish(
        lambda records: rebuild_manifest(cohort.out / "manifest.csv", records, rows, cohort.summary.rejected),
        lock="manifest.csv",
    )
    elsewhere = [r.job.slide_id for r in cohort.elsewhere]
    report = TilingReport(rows, failures, manifest, kept, skipped=len(cohort.plan.skipped), elsewhere=elsewhere)
    run = {"engine": engine, "workers": workers, "slide_params": len(slide_params), "inputs": len(paths)}
    ids = {slide_id_from_path(p) for p in paths}
    write_run_summary(out_dir, report, cohort.settings, time.time() - started, excluded=excluded & ids, run=run)
    return report


def _slide_jobs(
    paths: list[Path],
    config: TileConfig,
    slide_mpps: dict[str, float],
    failures: list[SlideFailure],
    excluded: set[str] = frozenset(),
) -> list[SlideJob]:
    """One cohort job per slide but the ``excluded`` ones; a slide whose id another slide already has fails
    (added to ``failures``)."""
    jobs: list[SlideJob] = []
    owner: dict[str, Path] = {}
    for path in paths:
        slide_id = slide_id_from_path(path)
        if slide_id in excluded:
            continue
        if slide_id in owner:
            failures.append(
                SlideFailure(path, f"slide id {slide_id!r} is already used by {owner[slide_id]}; rename one")
            )
            continue
        owner[slide_id] = path
        jobs.append(SlideJob(slide_id, str(path), settings=slide_settings(slide_id, config, slide_mpps)))
    return jobs


def rebuild_manifest(
    path: Path, records: dict[str, dict[str, Any]], rows: list[dict[str, Any]], rejected: Iterable[str] = ()
) -> tuple[Path, int]:
    """The manifest of every slide done in the folder: rows of the done records (this run's last),
    after the rows of an older manifest for slides that have no record (nor a ``rejected`` one: its
    outputs did not match it). Returns (path, rows not from this run)."""
    mine = {str(row["slide_id"]) for row in rows}
    recorded = [
        r["result"] for sid, r in sorted(records.items()) if sid not in mine and isinstance(r.get("result"), dict)
    ]
    drop = set(rejected) - mine
    manifest, kept = merge_manifest(path, recorded + rows, drop)  # an older manifest's rows without a record stay
    return manifest, kept + len(recorded)
