"""Pack patches into webdataset tar shards for the DALI loader.

    python -m clusiam_fast.shards SRC --out DIR [--shard-size 10000] [--seed 0]
        [--format jpg|png] [--quality 95] [--workers N]

SRC is resolved as DATA is for ``train`` (:mod:`clusiam_fast.data.resolve`): a tiler
``manifest.csv`` or a tiler output folder (patches read from the slides and encoded;
the folder's QA thumbnails are never packed), else a folder of image files (copied
byte for byte). See :mod:`clusiam_fast.data.shards`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .cli.errors import PARTIAL, run_verb, verb_parser

EXAMPLES = """\
  clusiam-fast shards tiles/manifest.csv --out shards        # patches read from the slides, JPEG-encoded
  clusiam-fast shards patches/ --out shards --shard-size 5000  # image files copied byte for byte
"""


def build_parser():
    parser = verb_parser(
        "shards",
        "Pack a folder of image patches or a tiler manifest.csv into webdataset tar shards "
        "(with DALI index files) for build_dali_loader.",
        EXAMPLES,
    )
    parser.add_argument(
        "source", help="a tiler manifest.csv or output folder, or a folder of images (searched recursively)"
    )
    parser.add_argument("--out", required=True, help="output folder for shard-*.tar, shard-*.idx, shards.json")
    parser.add_argument("--shard-size", type=int, default=10000, help="samples per shard (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle before packing")
    parser.add_argument(
        "--format",
        choices=("jpg", "png"),
        default="jpg",
        help="encoding of patches read from slides (files are copied as they are)",
    )
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for patches read from slides")
    parser.add_argument("--workers", type=int, default=4, help="threads / processes reading the inputs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 no sample packed, 2 bad input, 4 unusable --out)."""
    return run_verb("shards", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from .cli.errors import check_out_path
    from .data.resolve import resolve_data

    check_out_path(args.out)
    data = resolve_data(args.source, accept=("manifest", "folder"), what="SRC")
    from .data.shards import pack_images, pack_manifest

    if data.kind == "manifest":
        summary = pack_manifest(
            data,
            args.out,
            shard_size=args.shard_size,
            seed=args.seed,
            fmt=args.format,
            quality=args.quality,
            workers=args.workers,
        )
    else:
        if not data.files:
            raise ValueError(f"SRC {data.path} holds no image files")
        summary = pack_images(data.files, args.out, shard_size=args.shard_size, seed=args.seed, workers=args.workers)
    print(
        f"wrote {summary['num_shards']} shard(s) with {summary['num_samples']} samples to {args.out}"
        + (f"; {len(summary['skipped'])} left out (see shards.json)" if summary["skipped"] else "")
    )
    return PARTIAL if summary["num_samples"] == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
