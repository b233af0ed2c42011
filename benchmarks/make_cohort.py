"""A cohort of synthetic slides made of real tissue: ``python benchmarks/make_cohort.py OUT``.

Usage::

    python benchmarks/make_cohort.py OUT [--n 12] [--size 8000x6000] [--big] [--seed 0]
        [--mpp 0.5] [--tile 256] [--quality 80] [--workers N] [--source SLIDE ...]

Writes ``OUT/cohort_000.svs`` ... (``--n`` slides of ``--size`` width x height px) and, with
``--big``, ``OUT/big_40000x30000.svs`` for benchmarks. Each slide is a mosaic: the slide is
cut into cells of two tiles (512 px at ``--tile 256``); cells inside a few random elliptical
"sections" hold blocks of real tissue cut from the source slides (default
``../shared/data/wsi``: CMU-1-Small-Region.svs and OS-1-detail.ome.tif, scaled to ``--mpp``),
each with a random flip / rotation, taken where the source has tissue; the other cells,
the margins and a few holes are glass. So tissue detection has something to find and
something to reject.

The files are Aperio SVS as OpenSlide, cuCIM and tifffile expect them: page 0 is level 0
(tiled JPEG, ImageDescription ``Aperio Image Library ... |AppMag = 20|MPP = 0.5``, read by
OpenSlide as ``openslide.mpp-x`` and ``openslide.objective-power``), page 1 a stripped
thumbnail, then the tiled levels, each 4x smaller (until a level would be under one tile),
then the label (subfile type 1) and macro (subfile type 9) images. JPEG tiles are YCbCr
4:2:0 (PhotometricInterpretation YCbCr).

Memory-safe at any size: tiles are rendered one at a time from the cell layout and handed
to tifffile as an iterator of encoded tiles (encoded in ``--workers`` threads; glass tiles
are encoded once per level and reused), and every level is cut from sources downsampled
once, so no level is ever held whole. The 40,000 x 30,000 slide (4 levels, 19,812 tiles,
about 136 MB) takes 12-18 s on 2 busy CPU cores, at a peak of about 130 MB resident memory.

From Python::

    from make_cohort import write_cohort, write_slide  # with benchmarks/ on sys.path
    paths = write_cohort("cohort", n=4, size=(4000, 3000), seed=0)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_WSI = Path(os.environ.get("CLUSIAM_SHARED_DATA", REPO.parent / "shared" / "data")) / "wsi"
DEFAULT_SOURCES = ("CMU-1-Small-Region.svs", "OS-1-detail.ome.tif")
BIG_SIZE = (40_000, 30_000)
GLASS = (245, 243, 243)  # RGB of the background: the median of CMU-1-Small-Region's glass
APERIO = "Aperio Image Library v12.0.15 \r\n"
MIN_BLOCK_TISSUE = 0.4  # source blocks are taken where at least this fraction is tissue (if any is)


# -- sources ---------------------------------------------------------------------------------


@dataclass
class Source:
    """One source slide's level 0 scaled to the target mpp, and its copies at each downsample."""

    name: str
    levels: dict[int, np.ndarray]  # downsample -> RGB image
    offsets: np.ndarray  # (K, 2) level-0 (x, y) where a block may be cut (multiples of the largest downsample)


def _resize(image: np.ndarray, size: tuple[int, int], box: bool = True) -> np.ndarray:
    from PIL import Image

    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.BOX if box else Image.LANCZOS))


def load_sources(paths: Sequence[str | Path], mpp: float, cell: int, downsamples: Sequence[int]) -> list[Source]:
    """Read each source slide's level 0 (clusiam_fast's tifffile reader, which also gives its mpp)."""
    from clusiam_fast.slides import open_slide

    align = max(downsamples)
    sources = []
    for path in paths:
        with open_slide(path, "tifffile") as reader:
            w, h = reader.dimensions
            rgb = reader.read_region((0, 0), 0, (w, h))
            scale = (reader.mpp or mpp) / mpp  # a source without mpp is taken as being at the target mpp
        # scale to the target mpp; enlarge a source too small to give varied blocks (OS-1-detail: 500 -> 832 px)
        scale = max(scale, (1.5 * cell + align) / min(w, h))
        if abs(scale - 1.0) > 0.02:
            rgb = _resize(rgb, (round(w * scale), round(h * scale)), box=False)
        h, w = rgb.shape[:2]
        levels = {ds: _resize(rgb, (w // ds, h // ds)) for ds in downsamples}
        # aligned block corners, ranked by how much tissue the block holds (saturation on a small copy)
        small_ds = min(16, align)
        small = levels.get(small_ds, _resize(rgb, (w // small_ds, h // small_ds))).astype(np.int16)
        tissue = (small.max(-1) - small.min(-1)) > 25
        xs, ys = np.arange(0, w - cell - align + 1, align), np.arange(0, h - cell - align + 1, align)
        corners = np.array([(x, y) for y in ys for x in xs], np.int64).reshape(-1, 2)
        c = cell // small_ds
        sums = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table: block sums in O(1)
        cx, cy = corners[:, 0] // small_ds, corners[:, 1] // small_ds
        share = (sums[cy + c, cx + c] - sums[cy, cx + c] - sums[cy + c, cx] + sums[cy, cx]) / (c * c)
        rich = corners[share >= MIN_BLOCK_TISSUE]
        sources.append(Source(Path(path).name, levels, rich if len(rich) else corners))
    return sources


# -- layout ----------------------------------------------------------------------------------


@dataclass
class Mosaic:
    """Which block of which source lies in each cell of a slide (``piece[r, c, 0] == -1``: glass)."""

    width: int
    height: int
    cell: int
    pieces: np.ndarray  # (rows, cols, 4) int: source index, x, y, transform 0..7 (rot90 k = t % 4, flip = t >= 4)

    @property
    def tissue_share(self) -> float:
        """Fraction of cells holding a tissue block."""
        return float((self.pieces[..., 0] >= 0).mean())


def make_mosaic(width: int, height: int, cell: int, sources: Sequence[Source], rng: np.random.Generator) -> Mosaic:
    """A few random elliptical sections of tissue cells, with glass margins and a few holes."""
    rows, cols = math.ceil(height / cell), math.ceil(width / cell)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64) + 0.5
    yy, xx = yy * cell / height, xx * cell / width  # cell centres in [0, 1]
    inside = np.zeros((rows, cols), bool)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = rng.uniform(0.25, 0.75, 2)
        rx, ry = rng.uniform(0.12, 0.3, 2)
        angle = rng.uniform(0, np.pi)
        dx, dy = xx - cx, yy - cy
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        inside |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    inside &= rng.random((rows, cols)) > 0.05  # holes
    if rows > 2 and cols > 2:  # glass all round
        inside[[0, -1], :] = False
        inside[:, [0, -1]] = False
    if not inside.any():
        inside[rows // 2, cols // 2] = True
    pieces = np.full((rows, cols, 4), -1, np.int64)
    r, c = np.nonzero(inside)
    which = rng.integers(0, len(sources), len(r))
    pieces[r, c, 0] = which
    for i, s in enumerate(sources):
        take = np.nonzero(which == i)[0]
        pieces[r[take], c[take], 1:3] = s.offsets[rng.integers(0, len(s.offsets), len(take))]
    pieces[r, c, 3] = rng.integers(0, 8, len(r))
    return Mosaic(width, height, cell, pieces)


# -- rendering -------------------------------------------------------------------------------


def _edges(n: int, cell: int, ds: int) -> np.ndarray:
    """Pixel edges of cells 0..n on a level of downsample ``ds`` (rounded, so spans tile the level)."""
    return (np.arange(n + 1) * cell + ds // 2) // ds


class LevelRenderer:
    """Tiles of one pyramid level of a mosaic, as RGB arrays (None for all-glass tiles)."""

    def __init__(self, mosaic: Mosaic, sources: Sequence[Source], ds: int, tile: int) -> None:
        self.mosaic, self.sources, self.ds, self.tile = mosaic, sources, ds, tile
        rows, cols = mosaic.pieces.shape[:2]
        self.xe, self.ye = _edges(cols, mosaic.cell, ds), _edges(rows, mosaic.cell, ds)
        self.width, self.height = mosaic.width // ds, mosaic.height // ds
        self.tiles_across, self.tiles_down = math.ceil(self.width / tile), math.ceil(self.height / tile)

    def _block(self, r: int, c: int) -> np.ndarray:
        """Cell (r, c) on this level: its source block, transformed, (span h, span w, 3)."""
        s, x, y, t = (int(v) for v in self.mosaic.pieces[r, c])
        bh, bw = int(self.ye[r + 1] - self.ye[r]), int(self.xe[c + 1] - self.xe[c])
        rot, flip = t % 4, t >= 4
        ch, cw = (bh, bw) if rot % 2 == 0 else (bw, bh)  # shape before the rotation
        x0, y0 = x // self.ds, y // self.ds
        block = self.sources[s].levels[self.ds][y0 : y0 + ch, x0 : x0 + cw]
        block = np.rot90(block, rot)
        return block[:, ::-1] if flip else block

    def tile_at(self, tx: int, ty: int) -> np.ndarray | None:
        """Tile (tx, ty), padded with glass past the level's edge; None when it lies on glass only."""
        x0, y0 = tx * self.tile, ty * self.tile
        x1, y1 = x0 + self.tile, y0 + self.tile
        c0, c1 = np.searchsorted(self.xe, x0, "right") - 1, np.searchsorted(self.xe, min(x1, self.width), "left")
        r0, r1 = np.searchsorted(self.ye, y0, "right") - 1, np.searchsorted(self.ye, min(y1, self.height), "left")
        cells = self.mosaic.pieces[r0:r1, c0:c1, 0]
        if not (cells >= 0).any():
            return None
        out = np.empty((self.tile, self.tile, 3), np.uint8)
        out[:] = GLASS
        for r in range(r0, r1):
            for c in range(c0, c1):
                if self.mosaic.pieces[r, c, 0] < 0:
                    continue
                bx0, by0 = int(self.xe[c]), int(self.ye[r])
                ix0, iy0 = max(bx0, x0), max(by0, y0)
                ix1 = min(int(self.xe[c + 1]), x1, self.width)
                iy1 = min(int(self.ye[r + 1]), y1, self.height)
                if ix1 <= ix0 or iy1 <= iy0:
                    continue
                block = self._block(r, c)
                out[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = block[iy0 - by0 : iy1 - by0, ix0 - bx0 : ix1 - bx0]
        return out

    def tiles(self) -> Iterator[np.ndarray | None]:
        for ty in range(self.tiles_down):
            for tx in range(self.tiles_across):
                yield self.tile_at(tx, ty)

    def whole(self) -> np.ndarray:
        """The whole level as one array (for the small ones: thumbnail, macro)."""
        out = np.empty((self.tiles_down * self.tile, self.tiles_across * self.tile, 3), np.uint8)
        for ty in range(self.tiles_down):
            for tx in range(self.tiles_across):
                t = self.tile_at(tx, ty)
                out[ty * self.tile : (ty + 1) * self.tile, tx * self.tile : (tx + 1) * self.tile] = (
                    GLASS if t is None else t
                )
        return out[: self.height, : self.width]


def _encoded_tiles(renderer: LevelRenderer, quality: int, workers: int, progress=None) -> Iterator[bytes]:
    """JPEG-encoded tiles of a level in TIFF order; glass tiles share one encoding."""
    import imagecodecs

    def encode(tile: np.ndarray) -> bytes:
        return imagecodecs.jpeg8_encode(tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling="420")

    glass = np.empty((renderer.tile, renderer.tile, 3), np.uint8)
    glass[:] = GLASS
    glass_bytes = encode(glass)

    def job(tile: np.ndarray | None) -> bytes:
        return glass_bytes if tile is None else encode(tile)

    chunk = max(16, 8 * workers)
    tiles = renderer.tiles()
    with ThreadPoolExecutor(workers) as pool:
        while True:
            batch = [t for _, t in zip(range(chunk), tiles)]
            if not batch:
                return
            encoded = list(pool.map(job, batch))
            if progress is not None:
                progress.update(len(batch))
            yield from encoded


# -- the file --------------------------------------------------------------------------------


def pyramid_downsamples(width: int, height: int, tile: int) -> list[int]:
    """1, 4, 16, ... while the next level is at least one tile on its short side."""
    out = [1]
    while min(width, height) // (out[-1] * 4) >= tile:
        out.append(out[-1] * 4)
    return out


def _label(name: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (387, 463), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 366, 120), outline=(0, 0, 0), width=3)
    draw.text((40, 60), name, fill=(0, 0, 0))
    draw.text((40, 160), "clusiam_fast synthetic cohort", fill=(60, 60, 60))
    return np.asarray(image)


def write_slide(
    path: str | Path,
    size: tuple[int, int],
    *,
    seed: int = 0,
    mpp: float = 0.5,
    sources: Sequence[str | Path] | None = None,
    tile: int = 256,
    quality: int = 80,
    workers: int | None = None,
    progress: bool = False,
    loaded: list[Source] | None = None,
) -> Path:
    """Write one pyramidal JPEG Aperio SVS slide of ``size`` (width, height) px at ``mpp`` um/px.

    ``sources`` are the slides tissue is cut from (default: CMU-1-Small-Region.svs and
    OS-1-detail.ome.tif in ``../shared/data/wsi``); ``loaded`` reuses sources already read
    by :func:`load_sources` (same ``mpp``, ``tile`` and pyramid). The file is written under
    a temporary name and renamed when complete.
    """
    import tifffile

    from clusiam_fast.utils.atomic import atomic_path

    path = Path(path)
    width, height = (int(v) for v in size)
    if width < tile or height < tile:
        raise ValueError(f"slide size {width}x{height} is smaller than one tile ({tile} px)")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (JPEG 4:2:0 blocks), got {tile}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    downsamples = pyramid_downsamples(width, height, tile)
    cell = 2 * tile
    if loaded is None:
        loaded = load_sources(_source_paths(sources), mpp, cell, downsamples)
    missing = [ds for ds in downsamples if any(ds not in s.levels for s in loaded)]
    if missing:
        raise ValueError(f"the loaded sources lack downsamples {missing}: load them for the largest slide")
    rng = np.random.default_rng(seed)
    mosaic = make_mosaic(width, height, cell, loaded, rng)
    renderers = [LevelRenderer(mosaic, loaded, ds, tile) for ds in downsamples]
    workers = workers or min(4, os.cpu_count() or 1)
    mag = round(10.0 / mpp)
    header = f"{APERIO}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
    fields = f"|AppMag = {mag}|MPP = {mpp:.4f}|Filename = {path.stem}|Generator = clusiam_fast make_cohort seed {seed}"
    thumb = renderers[-1].whole()
    scale = min(1.0, 1024 / max(thumb.shape[:2]))
    thumb = _resize(thumb, (max(1, round(thumb.shape[1] * scale)), max(1, round(thumb.shape[0] * scale))))
    macro = _resize(thumb, (1280, max(1, round(1280 * thumb.shape[0] / thumb.shape[1]))))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(r.tiles_across * r.tiles_down for r in renderers), unit="tile", desc=path.name)
    common = dict(photometric="rgb", metadata=None, resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    bigtiff = width * height * 3 > 2**33  # JPEG keeps level 0 far below 4 GB up to ~8 GB of raw pixels
    try:
        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tw:
            for i, renderer in enumerate(renderers):
                if i == 0:
                    description = header + fields
                else:
                    description = (
                        f"{APERIO}{width}x{height} [0,0 {width}x{height}] -> {renderer.width}x{renderer.height} "
                        f"JPEG/RGB Q={quality}"
                    )
                tw.write(
                    _encoded_tiles(renderer, quality, workers, bar),
                    shape=(renderer.height, renderer.width, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    compression="jpeg",
                    subsampling=(2, 2),
                    subfiletype=0,
                    description=description,
                    **common,
                )
                if i == 0:  # Aperio: the thumbnail is the second page
                    tw.write(
                        thumb,
                        compression="jpeg",
                        compressionargs={"level": 90},
                        rowsperstrip=16,
                        description=f"{APERIO}{width}x{height} -> {thumb.shape[1]}x{thumb.shape[0]} - " + fields,
                        **common,
                    )
            tw.write(
                _label(path.stem), compression="lzw", subfiletype=1, description=f"{APERIO}label 387x463", **common
            )
            tw.write(
                macro,
                compression="jpeg",
                subfiletype=9,
                description=f"{APERIO}macro {macro.shape[1]}x{macro.shape[0]}",
                **common,
            )
    finally:
        if bar is not None:
            bar.close()
    return path


def _source_paths(sources: Sequence[str | Path] | None) -> list[Path]:
    paths = [Path(p) for p in sources] if sources else [SHARED_WSI / name for name in DEFAULT_SOURCES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"source slides not found: {', '.join(missing)} (set CLUSIAM_SHARED_DATA to the shared/data folder "
            "or give --source SLIDE)"
        )
    return paths


def write_cohort(
    out_dir: str | Path,
    n: int,
    size: tuple[int, int] = (8000, 6000),
    seed: int = 0,
    mpp: float = 0.5,
    *,
    big: bool = False,
    sources: Sequence[str | Path] | None = None,
    tile: int = 256,
    quality: int = 80,
    workers: int | None = None,
    progress: bool = False,
) -> list[Path]:
    """``out_dir/cohort_000.svs`` ... (``n`` slides of ``size``), plus ``big_40000x30000.svs`` with ``big``.

    Slide i uses seed ``seed * 1000 + i`` (the big one ``seed * 1000 + 999``): the same
    arguments give the same files. Returns the paths written.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    jobs = [(Path(out_dir) / f"cohort_{i:03d}.svs", tuple(size), seed * 1000 + i) for i in range(n)]
    if big:
        jobs.append((Path(out_dir) / f"big_{BIG_SIZE[0]}x{BIG_SIZE[1]}.svs", BIG_SIZE, seed * 1000 + 999))
    if not jobs:
        return []
    largest = max((s for _, s, _ in jobs), key=lambda s: min(s))
    loaded = load_sources(_source_paths(sources), mpp, 2 * tile, pyramid_downsamples(*largest, tile))
    return [
        write_slide(
            p, s, seed=k, mpp=mpp, tile=tile, quality=quality, workers=workers, progress=progress, loaded=loaded
        )
        for p, s, k in jobs
    ]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT in pixels, e.g. 8000x6000, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def main(argv: Sequence[str] | None = None) -> int:
    if str(REPO) not in sys.path:  # run as a script from anywhere: use this checkout's clusiam_fast
        sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(
        prog="python benchmarks/make_cohort.py",
        description="Write synthetic pyramidal Aperio SVS slides (mosaics of real tissue on glass) for tests and "
        "benchmarks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--n", type=int, default=12, help="number of slides of --size")
    parser.add_argument("--size", type=_size, default=(8000, 6000), help="WIDTHxHEIGHT of each slide in pixels")
    parser.add_argument("--big", action="store_true", help=f"also one {BIG_SIZE[0]} x {BIG_SIZE[1]} px slide")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    parser.add_argument("--mpp", type=float, default=0.5, help="level-0 microns per pixel written in the metadata")
    parser.add_argument("--tile", type=int, default=256, help="tile side in pixels (multiple of 16)")
    parser.add_argument("--quality", type=int, default=80, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=None, help="JPEG encoding threads (default: up to 4)")
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="SLIDE",
        help="slide to cut tissue from (repeat; default: CMU-1-Small-Region.svs and OS-1-detail.ome.tif in "
        "../shared/data/wsi)",
    )
    args = parser.parse_args(argv)
    try:
        paths = write_cohort(
            args.out,
            args.n,
            args.size,
            args.seed,
            args.mpp,
            big=args.big,
            sources=args.source,
            tile=args.tile,
            quality=args.quality,
            workers=args.workers,
            progress=True,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"make_cohort: {error}", file=sys.stderr)
        return 2
    for p in paths:
        print(f"{p}  {p.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
