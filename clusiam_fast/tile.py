"""Tile whole-slide images into tissue patches: ``python -m clusiam_fast.tile``.

Usage::

    python -m clusiam_fast.tile SLIDE_OR_DIR... --out DIR [--mpp 0.5] [--patch-size 224]
        [--stride 224 | --overlap PX] [--min-tissue 0.5] [--slide-mpp X] [--slide-mpp-csv FILE]
        [--slide-params FILE]
        [--reader auto|cucim|openslide|tifffile] [--workers N] [--save-tiles none|jpg|png]
        [--on-corrupt-tile fail|skip] [--decode-device cpu|cuda] [--coords-format clam|trident]
        [--engine local|ray] [--ray-address ADDR] [--cpus-per-task C]
        [--redo] [--lock-timeout S] [--shard I/N]

For every slide (files named, or the slide files of a folder: .svs .tif .tiff .ndpi .vms
.vmu .scn .mrxs .svslide .bif .qptiff, not recursive) it

1. opens it with a backend: ``auto`` takes cuCIM for Aperio SVS / Philips / generic tiled
   TIFF (checked against tifffile's decoding), OpenSlide for the other vendor formats,
   tifffile for OME-TIFF (cuCIM opens Bio-Formats OME-TIFFs but gets their colours wrong);
2. reads the level-0 pixel size from the metadata (OpenSlide properties, Aperio
   description, OME PhysicalSize, Philips pixel spacing, TIFF resolution tags; never
   cuCIM's ``spacing()``, which says 1.0 for SVS). A slide without one fails, naming the
   file, unless ``--slide-mpp X`` gives it, or ``--slide-mpp-csv FILE`` (columns ``slide_id``
   or TRIDENT's ``wsi``, and ``mpp``) gives it per slide (used only where the metadata has
   none; a CSV value wins over ``--slide-mpp``). Re-running a folder with them (after the
   no-mpp advice) does the failed slides and leaves the done ones: settings are compared per
   slide, on the mpp the slide used;
3. plans the read for ``--mpp`` (default 0.5 um/px, the paper's 20x): the coarsest level
   not coarser than the target, ``read_size = round(patch_size x target / level mpp)`` px
   read there and resized to ``--patch-size`` (0.499 um/px -> 224 px at level 0; 0.227
   um/px -> 493 px; 0.25 um/px -> 448 px, or 224 px of a 2x level when the slide has one);
4. finds tissue on a low-resolution image (saturation, Gaussian smoothing, Otsu threshold
   with a floor and a no-glass guard, small specks removed and small holes filled; see
   ``clusiam_fast/tiling/tissue.py``) and keeps the grid patches (step ``--stride``, from
   the slide's corner, full patches only) whose tissue fraction is >= ``--min-tissue``;
5. writes ``DIR/patches/<slide_id>.h5`` (CLAM layout: ``coords`` N x 2 level-0 x, y with
   attributes patch_size = px read at patch_level, patch_level, downsample, level_dim,
   downsampled_level_dim, name, save_path, plus mpp, target_mpp, output_size), or with
   ``--coords-format trident`` ``DIR/patches/<slide_id>_patches.h5`` (TRIDENT layout:
   patch_size = px at the target resolution, patch_size_level0, level0_magnification,
   target_magnification = 10 / mpp, overlap, name, savetodir, level0_width, level0_height,
   plus ours); the two differ where the read level is not at the target (a 0.25 um/px
   slide without a 2x level: CLAM patch_size 448, TRIDENT 224 with patch_size_level0 448),
   so one file cannot serve both (``clusiam_fast/formats/coords_h5.py``); the QA picture
   ``DIR/thumbnails/<slide_id>.png`` (the overlay: tissue contours in green over the true colours, kept patches
   as blue squares), the tissue contours ``DIR/contours/<slide_id>.geojson`` (level-0 px; QuPath's
   *Import objects* opens them) and mask ``DIR/masks/<slide_id>.png``, the kept patches stitched at low
   resolution ``DIR/mosaics/<slide_id>.png``, and, with ``--save-tiles`` (patch export),
   ``DIR/tiles/<slide_id>/<slide_id>_<x>_<y>.<ext>``; at the end of the run ``DIR/summary.md`` (slides
   done and failed with reasons, patches, time, settings).

Reads are exact on every level: every ``--reader`` places a region as OpenSlide does, shifting
by the sub-pixel fraction where a level-0 location falls off the level's pixel grid (a
downsample such as 2.0005); beyond the slide's edge pixels are white (glass). ``--slide-params
FILE`` gives per-slide parameters (``clusiam_fast/tiling/slide_params.py``); a re-run redoes
only the slides whose row changed. Every run writes ``DIR/slide_params.csv`` (each slide, its
parameters, blank for the run's) to edit and pass back, as CLAM's process list.

``DIR/manifest.csv`` lists the slides tiled into DIR (columns slide_id, slide_path,
h5_path, num_patches, mpp, target_mpp, patch_size, read_level, read_size, backend,
thumbnail, corrupt_patches). Tiling into a DIR that has a manifest merges into it: slides
of earlier runs stay listed, a slide tiled again gets its row replaced. Train on it directly, no tile files needed: ``python -m clusiam_fast.train
DIR/manifest.csv`` (patches are read on the fly by
``clusiam_fast.data.slide_dataset.SlidePatchDataset``, which also loads CLAM and TRIDENT h5
files made elsewhere, each at its own field of view).

Damaged tile data (zeroed or truncated JPEG / JPEG 2000 tiles, which cuCIM would silently
decode as black or gray; see ``clusiam_fast/slides/integrity.py``) fails the slide with an
error naming the level-0 region; ``--on-corrupt-tile skip`` instead drops the patches lying
on it and reports how many per slide (summary, manifest ``corrupt_patches``).
``--decode-device cuda`` decodes the ``--save-tiles`` patches on the GPU (cuCIM's cuslide2 /
nvImageCodec; needs cuCIM and a visible GPU).

Cohorts (``clusiam_fast/cohort``): ``--engine local`` (default) tiles ``--workers`` slides
at a time in local processes; ``--engine ray`` runs one Ray task per slide (``--cpus-per-task``
CPUs each) on the cluster at ``--ray-address`` (``auto``: the one ``ray start --head`` made
on this machine; an address that does not answer, or is not a Ray head, fails at once with one line) or on a local Ray
instance of ``--workers x --cpus-per-task`` CPUs (``pip install ".[ray]"``). Every tiled slide
gets a done record ``DIR/done/<slide_id>.json`` (its file's size, mtime and a fingerprint of
its first and last MiB, the settings and their hash, the manifest row) written after its
outputs; a re-run skips done slides whose h5 file opens and holds the record's patches, and
says how many (a malformed record or lock, or missing outputs, is named and the slide redone);
``--redo`` tiles them again; a folder tiled with other settings is refused
unless ``--redo``. Jobs may share DIR (Slurm array tasks, several nodes): each slide is
locked while tiled (``DIR/locks/<slide_id>.lock``: host, pid, time; taken over when its pid
is dead on this host or it is older than ``--lock-timeout``) and ``--shard I/N`` takes part
I of N of the sorted slide ids. ``DIR/cohort.json`` (done, failed with reasons, skipped,
pending, patches, seconds) is rewritten as slides finish, and the manifest is rebuilt from
the done records at the end.

Slides run in parallel with a progress bar (slides; patches so far). A slide that cannot be
tiled (unreadable, corrupt, unknown format, no mpp, no tissue) is reported by file name as
soon as it fails and in the summary; the others go on; the exit status is 1 if any slide
failed (2 for bad arguments). The tiler does not import torch. Files are written under temporary names and renamed when
complete, and a slide's h5 file is written last.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .cli.config_file import add_config_flags, dump, parse_args, settings, write_config
from .cli.errors import PARTIAL, DefaultsFormatter, check_out_path, run_verb, verb_parser
from .cli.types import positive_float, positive_int
from .cohort.cli import add_cohort_arguments

# the tiling pipeline (numpy, readers) is imported in main(), so that --help answers at once
EXAMPLES = """\
  clusiam-fast tile slides/ --out tiles                        # 224 px at 0.5 um/px (20x), CLAM h5 files
  clusiam-fast tile a.svs b.ndpi --out tiles --mpp 1.0 --save-tiles jpg
  clusiam-fast tile slides/ --out tiles --shard 0/4             # part 0 of 4 (Slurm arrays, several nodes)
  clusiam-fast tile --config tiles/config.yaml                  # the same settings again (done slides are skipped)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = verb_parser(
        "tile",
        "Cut whole-slide images into tissue patches at a fixed resolution: CLAM- (or TRIDENT-) "
        "compatible coordinate files, QA thumbnails and a manifest to train on.",
        EXAMPLES,
        formatter_class=DefaultsFormatter,
    )
    parser.add_argument(
        "slides",
        nargs="+",
        metavar="SLIDE_OR_DIR",
        help="slide files, or folders whose slide files (not subfolders) are tiled",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: manifest.csv, patches/*.h5, thumbnails/*.png, tiles/",
    )
    parser.add_argument(
        "--mpp",
        type=positive_float,
        default=0.5,
        help="target resolution of the patches in microns per pixel (0.5 = 20x)",
    )
    parser.add_argument("--patch-size", type=positive_int, default=224, help="patch side in output pixels")
    step = parser.add_mutually_exclusive_group()
    step.add_argument(
        "--stride",
        type=positive_int,
        default=None,
        help="grid step in output pixels (default: the patch size, no overlap)",
    )
    step.add_argument(
        "--overlap",
        type=int,
        default=None,
        metavar="PX",
        help="output pixels shared by neighbouring patches (TRIDENT's --overlap): the step is patch size - PX",
    )
    parser.add_argument(
        "--min-tissue",
        type=float,
        default=0.5,
        help="keep a patch when at least this fraction of it is tissue (0 keeps all)",
    )
    parser.add_argument(
        "--slide-mpp",
        type=positive_float,
        default=None,
        metavar="X",
        help="level-0 microns per pixel for slides whose metadata has none (metadata wins)",
    )
    parser.add_argument(
        "--slide-mpp-csv",
        default=None,
        metavar="FILE",
        help="per-slide level-0 microns per pixel: a CSV with columns slide_id (or TRIDENT's wsi) and mpp, for "
        "slides whose metadata has none (metadata wins; it wins over --slide-mpp)",
    )
    parser.add_argument(
        "--slide-params",
        default=None,
        metavar="FILE",
        help="per-slide parameters (CLAM's process list): a CSV with slide_id (or wsi) and any of mpp, min_tissue, "
        "tissue_threshold, min_area_um2, keep (0 leaves the slide out); a re-run redoes just the slides whose row "
        "changed",
    )
    parser.add_argument(
        "--reader",
        "--backend",
        dest="backend",
        choices=("auto", "cucim", "openslide", "tifffile"),
        default="auto",
        help="slide reader; auto picks per file (cuCIM where it reads the file correctly); every reader places "
        "patches as OpenSlide does",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, min(8, (os.cpu_count() or 2) // 2)),
        help="slides tiled in parallel (local engine: processes; ray without --ray-address: the local instance's CPUs)",
    )
    parser.add_argument(
        "--save-tiles",
        choices=("none", "jpg", "png"),
        default="none",
        help="patch export (CLAM's --dump_patches): also write every patch, resized to --patch-size, as "
        "DIR/tiles/<slide_id>/<slide_id>_<x>_<y>.<ext> (level-0 x, y)",
    )
    parser.add_argument(
        "--on-corrupt-tile",
        choices=("fail", "skip"),
        default="fail",
        help="on damaged tile data: fail the slide (naming the region), or drop the patches on it and count them",
    )
    parser.add_argument(
        "--decode-device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where --save-tiles decodes patch pixels; cuda needs cuCIM (cuslide2) and a visible GPU",
    )
    parser.add_argument(
        "--coords-format",
        choices=("clam", "trident"),
        default="clam",
        help="convention of patches/*.h5: clam (patch_size = px read at patch_level) or trident "
        "(patch_size at the target, patch_size_level0, magnifications; <slide>_patches.h5)",
    )
    cohort = add_cohort_arguments(
        parser, "tile", "local: --workers processes on this machine; ray: one Ray task per slide (pip install '.[ray]')"
    )
    cohort.add_argument(
        "--cpus-per-task", type=positive_float, default=1.0, metavar="C", help="CPUs Ray reserves per slide task"
    )
    add_config_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some slide failed, 2 bad input, 4 unusable --out)."""
    return run_verb("tile", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    resolved = settings(parser, vars(args))
    if args.print_config:
        print(dump(resolved), end="")
        return 0
    check_out_path(args.out)
    if not any(os.path.lexists(path) for path in args.slides):  # one missing among others (or a dangling link) fails
        raise FileNotFoundError(f"SLIDE_OR_DIR: none of {', '.join(args.slides)} exists")
    if args.engine == "local" and args.workers > 1:  # the workers' fork server imports the tiler beside us
        from clusiam_fast.cohort.engines import start_fork_server

        start_fork_server(["clusiam_fast.tiling.worker_imports"])  # = tiling.pipeline.WORKER_PRELOAD
    from clusiam_fast.cohort import parse_shard
    from clusiam_fast.tiling.mpp_table import read_mpp_table
    from clusiam_fast.tiling.pipeline import TileConfig, tile_slides
    from clusiam_fast.tiling.slide_params import read_slide_params

    shard = parse_shard(args.shard)
    slide_mpps = read_mpp_table(args.slide_mpp_csv) if args.slide_mpp_csv else None
    slide_params = read_slide_params(args.slide_params) if args.slide_params else None
    if args.overlap is not None and not 0 <= args.overlap < args.patch_size:
        raise ValueError(f"--overlap must be within [0, --patch-size {args.patch_size}), got {args.overlap}")
    config = TileConfig(
        target_mpp=args.mpp,
        patch_size=args.patch_size,
        stride=args.stride if args.overlap is None else args.patch_size - args.overlap,
        min_tissue=args.min_tissue,
        slide_mpp=args.slide_mpp,
        backend=args.backend,
        save_tiles=args.save_tiles,
        on_corrupt_tile=args.on_corrupt_tile,
        decode_device=args.decode_device,
        coords_format=args.coords_format,
    )
    report = tile_slides(
        args.slides,
        args.out,
        config,
        workers=args.workers,
        engine=args.engine,
        ray_address=args.ray_address,
        cpus_per_task=args.cpus_per_task,
        redo=args.redo,
        lock_timeout=args.lock_timeout,
        shard=shard,
        slide_mpps=slide_mpps,
        slide_params=slide_params,
    )
    write_config(args.out, resolved)  # OUT/config.yaml: --config it to tile with the same settings again
    print(report.summary())
    return 0 if report.ok else PARTIAL


if __name__ == "__main__":
    sys.exit(main())
