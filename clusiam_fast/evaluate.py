"""Evaluate feature bags: ``python -m clusiam_fast.evaluate FEATURES --labels slides.csv
[--patch-labels patches.csv] --out REPORT``.

FEATURES is the --out folder of ``python -m clusiam_fast.extract`` (or a folder of
CLAM-style .h5 feature files). Runs what the labels allow:

- slides.csv (``slide_id,label[,split][,patient_id]``): Max-pooling MIL, DSMIL and ABMIL
  (gated attention) with the paper's protocol (grid lr x weight decay, 50 epochs, 5
  warm-up + cosine, stratified seeded 75/25 train/validation split of the training
  slides, best validation checkpoint tested once, several seeds, mean ± std of accuracy
  and per-class one-vs-rest AUC) and a bootstrap 95% CI of the test macro AUC
  (--bootstrap). Without a split column, a stratified seeded train/test split is made
  once (--test-fraction). --folds K: stratified K-fold cross-validation instead, every
  slide tested once by a model selected on its fold's training slides only. A
  patient_id column keeps each patient's slides on one side of every split (and the
  CI resamples patients); a patient with slides of two classes is an error.
  Test-slide attention is saved in REPORT/attention/ (with heatmaps for slides with
  coordinates).
- patches.csv (path,label[,split] or slide_id,x,y,label[,split]): assigner clusters vs
  K-means with the same K (Rand index, ARI, clusters used), and top-1 cosine KNN macro
  F1 from train to test patches when a split is given.
- always: cluster sizes and, for bags with coordinates, cluster maps over the thumbnails.
- the field's metrics (eva, Patho-Bench): balanced accuracy with its bootstrap CI (the headline),
  macro one-vs-rest and one-vs-one AUC, per-class AUC CIs, quadratic-weighted kappa with
  --ordinal; a logistic-regression linear probe (C swept on validation only) on the patches
  and on mean-pooled slide features, beside KNN and MIL.
- a center (site, batch, scanner) column in patches.csv or slides.csv: ARI/RI of the clusters
  against label and centre, PathoROB's clustering score, KNN with neighbours from another centre.
- the test set is checked against the run's pre-training record (pretrain_data.json): test
  slides, patients or files seen in self-supervised training are refused
  (--allow-pretrain-overlap reports them anyway, saying so in the report's first line).

Checked before anything runs: a bag with no patches or with NaN/Inf features is left
out, named on the console and in the report (``left_out_bags``); with --labels, every
split the protocol will make (the test split or the --folds, and the validation split
taken from each training part); when one cannot be made, one line names the classes and
their counts, what the labels allow (one split, which --folds) and what to change.

Writes REPORT/report.md, REPORT/report.json (every number) and PNG figures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .choices import MIL_MODEL_NAMES as MIL_MODELS  # torch-free, so --help needs no torch
from .cli.config_file import add_config_flags, dump, parse_args, settings, write_config
from .cli.errors import OutPathError, run_verb, verb_parser

EXAMPLES = """\
  clusiam-fast evaluate features --labels slides.csv --out report              # MIL: max-pooling, DSMIL, ABMIL
  clusiam-fast evaluate features --labels slides.csv --folds 5 --out report_cv  # 5-fold cross-validation
  clusiam-fast evaluate features --patch-labels patches.csv --out report        # clustering and KNN
  clusiam-fast evaluate --config report/config.yaml --out report_again          # the same settings again
"""
DESCRIPTION = (
    "Evaluate feature bags: MIL slide classification (paper protocol, bootstrap CI), clustering and KNN "
    "against patch labels, cluster maps; writes report.md, report.json and figures."
)


def build_parser() -> argparse.ArgumentParser:
    p = verb_parser("evaluate", DESCRIPTION, EXAMPLES)
    p.add_argument("features", type=Path, help="folder written by clusiam_fast.extract (bags/*.h5 + index.csv)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.md, report.json, *.png, maps/)")
    p.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="slides.csv: slide_id,label[,split][,patient_id] -> slide classification with MIL",
    )
    p.add_argument(
        "--patch-labels",
        type=Path,
        default=None,
        help="patches.csv: path|slide_id,x,y + label[,split] -> clustering and KNN",
    )
    g = p.add_argument_group("MIL protocol (defaults: the paper's)")
    g.add_argument(
        "--models",
        nargs="+",
        default=list(MIL_MODELS),
        choices=MIL_MODELS,
        help="MIL heads to evaluate (default: all three; abmil = gated attention, Ilse et al. 2018)",
    )
    g.add_argument(
        "--folds",
        type=int,
        default=None,
        help="stratified K-fold cross-validation (by patient with patient_id) instead of one train/test split "
        "(default: the paper's single split)",
    )
    g.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap replicates of the test AUC 95%% CI (default 1000; 0: none)",
    )
    g.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        help="seeds of MIL and of the linear probes (each: validation split, init, order); default 0 1 2 3 4 "
        "(5 runs, as eva's patch tasks)",
    )
    g.add_argument("--epochs", type=int, default=50, help="epochs per grid point (default 50)")
    g.add_argument("--warmup-epochs", type=int, default=5, help="linear warm-up epochs before cosine decay (default 5)")
    g.add_argument(
        "--lrs", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4], help="learning-rate grid (default 1e-2 1e-3 1e-4)"
    )
    g.add_argument(
        "--wds", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4], help="weight-decay grid (default 1e-2 1e-3 1e-4)"
    )
    g.add_argument("--batch-size", type=int, default=1, help="bags per step, padded with masks (default 1, as DSMIL)")
    g.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "adamw", "sgd"],
        help="optimiser (default adam with L2 weight decay, as DSMIL)",
    )
    g.add_argument(
        "--select-metric",
        default="auc_acc",
        choices=["auc_acc", "auc_macro", "accuracy", "loss"],
        help="validation metric choosing epoch and grid point (default auc_acc: mean of macro AUC and accuracy, as DSMIL)",
    )
    g.add_argument(
        "--val-fraction", type=float, default=0.25, help="validation share of the training slides (default 0.25)"
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.25,
        help="test share when slides.csv has no split column (default 0.25)",
    )
    g = p.add_argument_group("clustering, KNN and maps")
    g.add_argument(
        "--kmeans-k",
        type=int,
        default=None,
        help="K-means K (default: clusters used by the assigner, else number of classes)",
    )
    g.add_argument("--no-normalize", action="store_true", help="run K-means on raw instead of L2-normalised features")
    g.add_argument(
        "--knn-chunk", type=int, default=1024, help="test patches per KNN chunk (memory: chunk x 32768 floats)"
    )
    g.add_argument(
        "--annotations",
        type=Path,
        default=None,
        help="folder of annotation masks <slide_id>.png drawn as contours on the maps",
    )
    g.add_argument("--no-maps", action="store_true", help="skip the cluster maps")
    g.add_argument("--max-maps", type=int, default=50, help="at most this many cluster maps (default 50)")
    g.add_argument(
        "--attention-maps", type=int, default=4, help="attention heatmaps of this many test slides (default 4)"
    )
    g.add_argument("--map-size", type=int, default=2048, help="longest thumbnail side in px (default 2048)")
    g.add_argument(
        "--map-colour",
        choices=("cluster", "centre"),
        default="cluster",
        help="cluster maps coloured by cluster (default) or by centre: each cluster in the colour of the centre "
        "most of its patches come from (a center/site/batch/scanner column in --labels)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of K-means and of a missing train/test split or of the --folds (default 0)",
    )
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (MIL training and KNN)")
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=None,
        help="torch threads for MIL training on the CPU (default: 1 for small bags, else torch's)",
    )
    p.add_argument(
        "--ordinal",
        action="store_true",
        help="the labels are ordered (grades, in their sorted order): also report quadratic-weighted kappa",
    )
    p.add_argument("--no-probe", action="store_true", help="skip the logistic-regression linear probes")
    p.add_argument(
        "--allow-pretrain-overlap",
        action="store_true",
        help="evaluate even when test slides, patients or files were seen in self-supervised training "
        "(refused by default; the report then says so in its first line)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(p)
    return p


def _check_paths(args: argparse.Namespace) -> None:
    """The checks that need no torch, run before it is imported: the inputs exist, --out can be a folder."""
    for flag, path in (("FEATURES", args.features), ("--labels", args.labels), ("--patch-labels", args.patch_labels)):
        if path is not None and not path.exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    if args.out.exists() and not args.out.is_dir():
        raise OutPathError(f"--out {args.out} is a file, not a folder: choose a folder for the report")
    if args.folds is not None and args.folds < 2:
        raise ValueError(f"--folds must be at least 2, got {args.folds}")


def config_from_args(args: argparse.Namespace):
    """The :class:`~clusiam_fast.evaluation.pipeline.EvalConfig` of the command line."""
    import torch

    from .evaluation.mil.protocol import MILConfig
    from .evaluation.pipeline import EvalConfig

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    mil = MILConfig(
        lrs=tuple(args.lrs),
        weight_decays=tuple(args.wds),
        epochs=args.epochs,
        warmup_epochs=args.warmup_epochs,
        seeds=tuple(args.seeds),
        val_fraction=args.val_fraction,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        select_metric=args.select_metric,
        device=device,
        cpu_threads=args.cpu_threads,
        bootstrap=args.bootstrap,
        progress=not args.quiet,
    )
    return EvalConfig(
        mil=mil,
        mil_models=tuple(args.models),
        folds=args.folds,
        kmeans_k=args.kmeans_k,
        kmeans_normalize=not args.no_normalize,
        seed=args.seed,
        test_fraction=args.test_fraction,
        knn_query_chunk=args.knn_chunk,
        device=device,
        maps=not args.no_maps,
        max_maps=args.max_maps,
        attention_maps=args.attention_maps,
        map_size=args.map_size,
        map_colour=args.map_colour,
        annotations=args.annotations,
        allow_pretrain_overlap=args.allow_pretrain_overlap,
        ordinal=args.ordinal,
        probe=not args.no_probe,
        progress=not args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 4 unusable --out)."""
    return run_verb("evaluate", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    resolved = settings(parser, vars(args))
    if args.print_config:
        print(dump(resolved), end="")
        return 0
    _check_paths(args)
    from .evaluation.pipeline import run_evaluation

    cfg = config_from_args(args)
    results = run_evaluation(args.features, args.out, labels=args.labels, patch_labels=args.patch_labels, cfg=cfg)
    write_config(args.out, resolved)  # OUT/config.yaml: --config it to evaluate with the same settings again
    from .evaluation.bag_checks import left_out_lines
    from .evaluation.report import slide_label_lines

    if results["pretrain_overlap"].get("allowed"):
        print(f"evaluate: {results['pretrain_overlap']['statement']}", file=sys.stderr)
    for line in left_out_lines(results["left_out_bags"]["bags"]):
        print(f"evaluate: {line}", file=sys.stderr)
    for line in slide_label_lines(results):
        print(line)
    if "mil" in results:
        from .evaluation.bootstrap import format_ci

        print(f"MIL classes: {', '.join(f'{i}: {c}' for i, c in enumerate(results['mil']['classes']))}")
        for name, res in results["mil"]["models"].items():
            ci = res["summary"].get("auc_ci")
            where = f"{len(results['mil']['folds'])}-fold pooled" if results["mil"].get("folds") else "test split"
            auc = res["summary"]["auc_macro"]
            shown = (
                f"{format_ci(ci)} (95% CI, bootstrap over {ci['unit']}s)"
                if ci
                else "n/a"
                if auc["mean"] is None
                else f"{auc['mean']:.3f} ± {auc['std']:.3f} over seeds"
            )
            print(f"MIL {name}: test macro AUC {shown}, {where}, mean of {len(res['runs'])} seed(s)")
    done = [k for k in ("clustering", "knn", "mil", "cluster_maps") if k in results]
    print(
        f"wrote {args.out / 'report.md'} ({', '.join(done) or 'summary only'}); not run: {', '.join(results['skipped']) or 'nothing'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
