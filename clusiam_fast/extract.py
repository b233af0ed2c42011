"""Extract feature bags: ``python -m clusiam_fast.extract CHECKPOINT DATA --out DIR``.

CHECKPOINT is a trainer checkpoint (``clusiam_fast.models.load_checkpoint``) or a
ResNet state_dict written by ``clusiam_fast.train --export-backbone``. Baselines go
through the same pipeline without a CHECKPOINT:
``python -m clusiam_fast.extract --encoder timm:NAME --weights FILE DATA --out DIR`` (or
``torchvision:NAME``; weights from a local file, never downloaded; see
:mod:`clusiam_fast.extraction.encoders.baselines`). DATA is a tiler
``manifest.csv`` (or the folder holding it): patches are read on the fly from the
slides; or CLAM / TRIDENT coordinate files (``.h5`` files, a folder of them, or a CLAM
results folder with ``patches/``, ``masks/``, ``stitches/``; each file read in its own
convention, see :mod:`clusiam_fast.formats.coords_h5`), their slides found beside them
or in ``--slide-dir``; or a folder of patch images: one bag per folder that directly
holds images, named by its path relative to DATA (see :mod:`clusiam_fast.extraction.sources`).

Output format (one "bag" per slide)::

    DIR/bags/<slide_id>.h5     (slide_id made file-system safe: '/' -> '__')
        features   (N, F) float32, or float16 with --fp16  backbone output (512 for resnet18)
        probs      (N, K) same dtype                        assigner softmax (cluster methods only)
        clusters   (N,)   int32                             argmax of the assigner
        coords     (N, 2) int64                             level-0 (x, y) (slide input only)
        paths      (N,)   utf-8 strings                     image paths relative to DATA (folder input)
        attrs: slide_id, source, feature_dim, num_clusters (0 without assigner), method
               (timm:NAME / torchvision:NAME for baselines), arch, encoder, checkpoint,
               weights, weights_sha256, mean, std, resize, crop, dtype, and for slides
               slide_path, mpp, target_mpp, patch_size, read_level, read_size,
               backend, thumbnail, h5_path (from the manifest), or coords_format,
               level0_size (coordinate files)
    DIR/index.csv              slide_id,bag_path,num_patches,num_failed
    DIR/extract.json           settings, normalisation used, failures by name, throughput

The HDF5 files are CLAM-compatible feature files (``features``, ``coords``). An
unreadable patch is reported by name and left out of its bag; a slide whose patches
all fail gets no bag and is listed under ``failed_slides``; a slide of the manifest
whose file is missing (look elsewhere with ``--slide-dir``) is skipped and listed under
``missing_slides``; none of them stops the run (the exit status is then 1). A patch whose
field of view lies more than half a patch outside its slide (level 0; coordinates made for
another slide) is left out of its bag, named under ``failed_patches`` and counted
(``off_slide_patches`` in extract.json and cohort.json, and on the console); a slide left
with none fails by name.

Patch sizes: without ``--resize``/``--crop``, a DATA folder (or manifest) mixing patch
sizes is resized to the checkpoint's training size (``crop_size`` of its config; the
first patch's size for a plain state_dict), and extract.json (``size_note``) and the
console say so.

Cohorts (``clusiam_fast/cohort``, as for the tiler): every bag gets a done record
``DIR/done/<slide_id>.json`` (the slide and coordinate files' size and mtime, or its image
folder's; the checkpoint file and the transform settings, hashed) written after the bag; a
re-run skips done slides and says how many (``skipped_slides``), ``--redo`` forces, other
settings (e.g. another checkpoint) are refused unless ``--redo``. Jobs may share DIR:
per-slide locks (``--lock-timeout``) and ``--shard I/N``; ``DIR/cohort.json`` is rewritten as
slides finish and ``index.csv`` lists every bag done in DIR. ``--engine ray`` runs a pool of
``--actors`` Ray actors, each holding one model (``num_gpus=1`` each on GPUs, CPU actors
otherwise), fed patch batches read by Ray CPU tasks; each actor writes the bags it made,
atomically. ``--ray-address`` joins a running cluster (``ray start --head``; ``auto``);
without it a local Ray instance is started (``--actors`` + ``--workers`` CPUs).

Checkpoints with NaN/Inf weights are refused (exit status 2), as are ``--mean/--std``
that cannot be statistics of [0, 1] pixels (non-finite, std <= 0, values > 1 which
suggest 0-255 units).

Normalisation (must match training): ``--mean/--std``, else the statistics stored in
the trainer checkpoint (``norm_stats``, or ``mean``/``std`` in its config), else
``norm_stats.json`` beside the checkpoint (the trainer caches it in its run folder,
where ``--export-backbone`` files usually sit too), else ImageNet statistics with a
warning. timm models use their data config (mean/std; and, without ``--resize``/``--crop``,
resize to ``floor(size / crop_pct)`` and centre-crop to their input size, with their
interpolation); torchvision models ImageNet statistics.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli.config_file import add_config_flags, dump, parse_args, settings, write_config
from .cli.errors import PARTIAL, OutPathError, run_verb, verb_parser
from .cli.types import json_object
from .cohort.cli import add_cohort_arguments

USAGE = (
    "clusiam-fast extract CHECKPOINT DATA --out DIR [options]\n"
    "       clusiam-fast extract --encoder timm:NAME|torchvision:NAME --weights FILE DATA --out DIR [options]"
)
EXAMPLES = """\
  clusiam-fast extract runs/clusiam/checkpoint.pt tiles/manifest.csv --out features
  clusiam-fast extract runs/clusiam/backbone.pt patches/ --out features --fp16
  clusiam-fast extract --encoder timm:vit_small_patch16_224 --weights vit.safetensors tiles --out features_vit
  clusiam-fast extract runs/clusiam/checkpoint.pt coords/ --slide-dir slides/ --out features --shard 0/4
  clusiam-fast extract --config features/config.yaml        # the same settings again (done slides are skipped)
"""
DESCRIPTION = (
    "Feature bags (one CLAM-compatible HDF5 per slide: features, assigner probabilities, clusters, coordinates) "
    "from a trainer checkpoint, an exported backbone or a timm / torchvision baseline; resumable, sharded, Ray."
)


def build_parser() -> argparse.ArgumentParser:
    p = verb_parser("extract", DESCRIPTION, EXAMPLES, usage=USAGE)
    p.add_argument(
        "checkpoint",
        type=Path,
        metavar="CHECKPOINT",
        help="trainer checkpoint (.pt) or ResNet state_dict from --export-backbone (none with --encoder timm:/torchvision:)",
    )
    p.add_argument(
        "data",
        type=Path,
        nargs="?",
        metavar="DATA",
        help="tiler manifest.csv (or its folder), CLAM/TRIDENT .h5 coordinate files (or their results folder), "
        "or a folder of patch images",
    )
    p.add_argument(
        "--encoder",
        default="checkpoint",
        help="checkpoint (default: CHECKPOINT's model), timm:NAME or torchvision:NAME (a baseline, with --weights)",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=None,
        metavar="FILE",
        help="local weights of the timm/torchvision model: state_dict .pth/.pt/.bin or .safetensors (never downloaded)",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="no --weights: the timm/torchvision model's random initialisation (seed 0), for tests and chance baselines",
    )
    p.add_argument(
        "--encoder-kwargs",
        type=json_object,
        default=None,
        metavar="JSON",
        help='extra timm.create_model options the weights need, e.g. \'{"init_values": 1e-5, "dynamic_img_size": true}\'',
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for bags/, index.csv and extract.json")
    p.add_argument("--batch-size", type=int, default=128, help="patches per forward pass (default 128)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes reading patches (default 2)")
    p.add_argument(
        "--fp16", action="store_true", help="store features and probabilities as float16 (half the disk and memory)"
    )
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")
    p.add_argument(
        "--loader",
        choices=["torch", "dali"],
        default="torch",
        help="torch: DataLoader workers + torchvision (default); dali: slide patches resized, cropped and "
        "normalised by a DALI pipeline (on the GPU with a CUDA --device)",
    )
    p.add_argument(
        "--decode-device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where slide patches are decoded (default cpu); cuda: cuCIM on the GPU (cuCIM backend and a GPU "
        "needed; OME-TIFF stays on the CPU, as cuCIM reads its JPEG tiles with wrong colours)",
    )
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="disable float16 autocast on the GPU (AMP is on by default on CUDA, never on CPU)",
    )
    p.add_argument(
        "--resize",
        type=int,
        default=None,
        help="resize patches (shorter side) to this many px first (default: as read; mixed sizes: to the "
        "checkpoint's training size)",
    )
    p.add_argument("--crop", type=int, default=None, help="then centre-crop to this many px (default: none)")
    p.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=None,
        help="normalisation mean R G B in [0, 1] (default: from the checkpoint, see above)",
    )
    p.add_argument(
        "--std", type=float, nargs=3, default=None, help="normalisation std R G B (default: from the checkpoint)"
    )
    p.add_argument(
        "--slide-dir",
        type=Path,
        default=None,
        help="folder holding the slides: of CLAM/TRIDENT coordinate files, or of manifest slides that are not at "
        "their recorded paths (slides moved)",
    )
    p.add_argument(
        "--reader",
        choices=("auto", "cucim", "openslide", "tifffile"),
        default="auto",
        help="slide reader (auto: each slide's own, the manifest's backend); every reader places patches as "
        "OpenSlide does",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="SLIDES_CSV",
        help="slides.csv of the evaluation: its test slides (split column) and their patients (patient_id) must "
        "not be in the checkpoint's training data (pretrain_data.json of its run folder)",
    )
    p.add_argument(
        "--eva-manifest",
        type=Path,
        default=None,
        metavar="LABELS_CSV",
        help="also write eva's embeddings layout into OUT/eva (manifest.csv: origin, embeddings, target, split "
        "[, wsi_id]; one .pt per item) for the items labelled in LABELS_CSV: patches.csv gives one [D] tensor per "
        "patch, slides.csv one [N, D] tensor per slide",
    )
    p.add_argument(
        "--allow-pretrain-overlap",
        action="store_true",
        help="extract even when test slides or patients of --labels were seen in self-supervised training",
    )
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="load a CHECKPOINT / --weights file that needs pickle (it can run code embedded in the file); "
        "without it such files are refused and only tensors, numbers and strings are read",
    )
    c = add_cohort_arguments(
        p,
        "extract",
        "local: this process (+ --workers readers); ray: a pool of Ray actors each holding the model, fed by "
        "Ray CPU read tasks (pip install '.[ray]')",
    )
    c.add_argument(
        "--actors",
        type=int,
        default=None,
        help="Ray actors (models); default: one per GPU of the cluster (num_gpus=1 each), else 1 CPU actor",
    )
    add_config_flags(p)
    return p


def _check_paths(args: argparse.Namespace) -> None:
    """The checks that need no torch, run before it is imported: the inputs exist, --out can be a folder."""
    if args.encoder == "checkpoint" and not args.checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    if not args.data.exists():
        raise FileNotFoundError(f"DATA {args.data} does not exist")
    if args.out.exists() and not args.out.is_dir():
        raise OutPathError(f"--out {args.out} is a file, not a folder: choose a folder for the bags")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")


def _after_extract(args: argparse.Namespace, record) -> None:
    """Beside the bags: the run's pre-training record (evaluate checks its test set against it) and,
    with --eva-manifest, eva's embeddings layout."""
    if record is not None:
        from .formats.pretrain_record import copy_pretrain_record

        copy_pretrain_record(record, args.out)
    if args.eva_manifest is not None:
        from .evaluation.eva_export import write_eva_manifest
        from .formats.feature_bags import load_bags

        try:
            manifest, count, task = write_eva_manifest(load_bags(args.out), args.eva_manifest, args.out / "eva")
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"--eva-manifest: {error}") from None
        print(f"wrote eva's embeddings layout: {manifest} ({count} {task} items)")


def _pretrain_guard(args: argparse.Namespace):
    """The checkpoint run's pre-training record; with --labels, refuse test slides or patients it trained on."""
    from .formats.pretrain_record import check_pretrain_overlap, find_pretrain_record

    record = find_pretrain_record(args.checkpoint) if args.checkpoint is not None else None
    if args.labels is not None:
        from .evaluation.labels import read_slide_table

        table = read_slide_table(args.labels)
        test = [s for s, (_, split) in table.labels.items() if split == "test"]
        result = check_pretrain_overlap(
            record,
            allow=args.allow_pretrain_overlap,
            what=f"{args.labels} test",
            test_slides=test,
            patients=table.patients,
        )
        if result.get("allowed"):
            print(f"extract: {result['statement']}", file=sys.stderr)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some slides failed or missing, 2 bad input, 4 unusable --out)."""
    return run_verb("extract", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.encoder != "checkpoint" and args.data is None:  # a baseline takes DATA only
        args.checkpoint, args.data = None, args.checkpoint
    if args.data is None:
        parser.error("DATA is required (CHECKPOINT DATA, or --encoder timm:NAME --weights FILE DATA)")
    resolved = settings(parser, vars(args))
    if args.print_config:
        print(dump(resolved), end="")
        return 0
    _check_paths(args)
    record = _pretrain_guard(args)
    import warnings

    from .cohort import parse_shard
    from .extraction.pipeline import extract

    with warnings.catch_warnings():  # said once below, from the summary
        warnings.filterwarnings("ignore", message="patches come in")
        warnings.filterwarnings("ignore", message=".* slides are missing and are skipped")
        summary = extract(
            args.checkpoint,
            args.data,
            args.out,
            batch_size=args.batch_size,
            workers=args.workers,
            fp16=args.fp16,
            device=args.device,
            amp=not args.no_amp,
            resize=args.resize,
            crop=args.crop,
            mean=args.mean,
            std=args.std,
            progress=not args.quiet,
            slide_dir=args.slide_dir,
            reader=args.reader,
            encoder=args.encoder,
            weights=args.weights,
            random_init=args.random_init,
            encoder_kwargs=args.encoder_kwargs,
            engine=args.engine,
            ray_address=args.ray_address,
            actors=args.actors,
            redo=args.redo,
            lock_timeout=args.lock_timeout,
            shard=parse_shard(args.shard),
            trust_pickle=args.trust_pickle,
            loader=args.loader,
            decode_device=args.decode_device,
        )
    write_config(args.out, resolved)  # OUT/config.yaml: --config it to extract with the same settings
    _after_extract(args, record)
    if summary.get("size_note"):
        print(f"extract: {summary['size_note']}", file=sys.stderr)
    for missing in summary.get("missing_slides", []):
        print(f"extract: skipped missing slide {missing['slide_id']}: {missing['reason']}", file=sys.stderr)
    print(
        f"wrote {summary['num_slides']} bags ({summary['num_patches']} patches, {summary['feature_dim']}-d, "
        f"{summary['num_clusters']} clusters) to {args.out} at {summary['patches_per_second']:.0f} patches/s"
    )
    if summary.get("skipped_slides"):
        print(f"skipped {summary['skipped_slides']} slide(s) already extracted into {args.out} (--redo to redo them)")
    for slide_id, count in summary.get("off_slide_patches", {}).items():
        print(
            f"extract: {slide_id}: left out {count} patch(es) whose field of view lies outside the slide "
            f"(listed under failed_patches in {args.out / 'extract.json'})",
            file=sys.stderr,
        )
    for failed in summary["failed_slides"]:
        print(f"extract: FAILED {failed['slide_id']}: {failed['reason']}", file=sys.stderr)
    if summary["num_failed_patches"] or summary["failed_slides"]:
        print(
            f"{summary['num_failed_patches']} patches and {len(summary['failed_slides'])} slides failed; see {args.out / 'extract.json'}",
            file=sys.stderr,
        )
    if summary.get("missing_slides"):
        print(
            f"{len(summary['missing_slides'])} slides of the manifest are missing (listed under missing_slides in "
            f"{args.out / 'extract.json'}); pass --slide-dir FOLDER if they moved",
            file=sys.stderr,
        )
    return PARTIAL if summary["failed_slides"] or summary.get("missing_slides") else 0


if __name__ == "__main__":
    sys.exit(main())
