"""``python -m clusiam_fast.train``: self-supervised pre-training (CluSiam, CluBYOL, SimSiam, BYOL).

A thin layer over :func:`clusiam_fast.training.train`. Examples::

    python -m clusiam_fast.train --demo --out runs/demo --amp            # offline demo, ~1-3 min on a CPU
    python -m clusiam_fast.train patches/ --out runs/clusiam --amp       # the paper's settings
    python -m clusiam_fast.train tiles/manifest.csv --out runs/x --method clubyol
    torchrun --nproc_per_node 2 -m clusiam_fast.train patches/ --out runs/ddp --sync-bn
    srun torchrun --nnodes $SLURM_NNODES --nproc_per_node 4 --rdzv-backend c10d \\
        --rdzv-endpoint $head:29500 -m clusiam_fast.train tiles/manifest.csv --out runs/x   # nodes
    python -m clusiam_fast.train --out runs/clusiam --resume            # continue exactly where it stopped

Collapse monitors, per epoch in log.csv, the progress summary and training.png: backbone_std
(std of the L2-normalised backbone features x sqrt(dim); 0 collapsed), backbone_rankme (effective
rank of the last --rankme-window backbone features; 1 collapsed), assigner_entropy (usage of the K
clusters by argmax, / log K) and projection_std (the SimSiam paper's monitor on z, which the
projector's final BatchNorm keeps near 1 whatever the backbone does).

Schedule: the cosine spans --schedule-steps, else the run's length (--max-steps when it ends the
run before --epochs does); --resume keeps the checkpoint's schedule, unless it asks for more
epochs / steps than that spans: then the cosine spans the new length from the resume step on,
as if the run had been started so (one line says so). --max-steps 0 writes the
initial checkpoint; a run stopped mid-epoch adds a row with partial = 1 to log.csv.

``--batch-size`` is the global batch, split over the torchrun processes; only global rank 0
reads and writes --out (see README, "Multi-node training with torchrun").

Exit status: 0 done (or --max-steps reached), 2 bad arguments, data or checkpoint, or an output the
file system refused (disk full, read-only --out; the last checkpoint is left as it was) (one line on
stderr), 3 the loss or the weights became NaN / inf (the last good checkpoint is left as it was),
4 --out is a file, not a folder, 5 --stop-on-collapse: the backbone collapsed (the last checkpoint
above the thresholds is left as it was), 130 interrupted (Ctrl-C / SIGTERM; checkpoint saved).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .choices import CLUSTER_METHOD_NAMES, EMA_METHOD_NAMES, method_defaults_text
from .cli.config_file import add_config_flags, dump, parse_args, settings, write_config
from .cli.errors import COLLAPSED, NON_FINITE, run_verb, verb_parser
from .cli.types import finite_float
from .data.resolve import PATCH_KINDS, DataArg, resolve_data
from .training.config import (  # torch-free: --help answers fast, arguments are checked before torch loads
    ARCH_NAMES,
    CLUSTER_LOSS_IMPLS,
    METHOD_NAMES,
    CollapseError,
    NonFiniteLossError,
    TrainConfig,
    check_out_outside_data,
)
from .training.run_folder import CHECKPOINT, open_run_folder

D = TrainConfig()  # the defaults quoted in --help
NOT_SETTINGS = ("demo", "resume", "overwrite", "trust_pickle")  # what to do with OUT, not how to train
EXAMPLES = """\
  clusiam-fast train --demo --out runs/demo --amp                   # offline demo, ~1-3 min on a CPU
  clusiam-fast train patches/ --out runs/clusiam --amp              # the paper's settings
  clusiam-fast train tiles/manifest.csv --out runs/x --method clubyol
  clusiam-fast train --out runs/clusiam --resume                    # continue exactly where it stopped
  clusiam-fast train --config runs/clusiam/config.yaml --out runs/y # the same settings again
  torchrun --nproc_per_node 2 -m clusiam_fast.train patches/ --out runs/ddp --sync-bn
"""


def build_parser() -> argparse.ArgumentParser:
    """The CLI's parser: DATA, --out and --demo, then one function per group of flags, in --help's order."""
    p = verb_parser(
        "train",
        "Self-supervised pre-training of a ResNet on histopathology patches with CluSiam "
        "(SimSiam + cluster loss, Wu et al. ICCV 2023), CluBYOL, SimSiam or BYOL.",
        EXAMPLES,
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override (see main)
    )
    p.add_argument(
        "data",
        nargs="?",
        metavar="DATA",
        help="folder of image patches (png/jpg/jpeg/tif, searched recursively) or a tiler manifest.csv "
        "(or a tiler output folder holding one); optional with --demo or --resume",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run folder: checkpoint.pt, log.csv, steps.csv, training.png, norm_stats.json, train_config.json",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="generate DIR/demo_patches from scikit-image's immunohistochemistry image (no download) and "
        "train a short run on it (512 patches; crop 64, batch 32, 5 epochs, 16 clusters, 1 worker unless given)",
    )
    _add_model_flags(p)
    _add_loss_flags(p)
    _add_optimisation_flags(p)
    _add_data_flags(p)
    _add_runtime_flags(p)
    _add_checkpoint_flags(p)
    _add_collapse_flags(p)
    _add_output_flags(p)
    add_config_flags(p)
    return p


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model: method, backbone, heads."""
    g = p.add_argument_group("model")
    g.add_argument("--method", choices=METHOD_NAMES, help=f"method (default {D.method})")
    g.add_argument(
        "--arch",
        choices=ARCH_NAMES,
        help=f"backbone, random init (default {D.arch})",
    )
    g.add_argument("--num-clusters", type=int, metavar="K", help=f"clusters of the assigner (default {D.num_clusters})")
    g.add_argument(
        "--projector-end",
        choices=["bn", "linear"],
        help="end the projector with an affine-free BatchNorm (bn, default) or a linear layer (Table 5 ablation)",
    )
    g.add_argument(
        "--out-dim",
        type=int,
        metavar="N",
        help=f"projection size (default {method_defaults_text('out_dim')})",
    )
    g.add_argument(
        "--pred-hidden",
        type=int,
        metavar="N",
        help=f"predictor hidden size (default {method_defaults_text('pred_hidden')})",
    )
    g.add_argument(
        "--ema-momentum",
        type=finite_float,
        metavar="X",
        help=f"target EMA momentum of the momentum methods (default {method_defaults_text('ema_momentum', EMA_METHOD_NAMES)}, "
        "as published)",
    )


def _add_loss_flags(p: argparse.ArgumentParser) -> None:
    """The loss: alpha, Gumbel temperature, invariance reduction, kernels."""
    g = p.add_argument_group("loss")
    g.add_argument(
        "--alpha",
        type=finite_float,
        metavar="X",
        help="loss = (1-alpha)*invariance + alpha*cluster; default "
        f"{method_defaults_text('alpha', CLUSTER_METHOD_NAMES)}; 1.0 = cluster loss only",
    )
    g.add_argument(
        "--tau",
        type=finite_float,
        metavar="X",
        help=f"Gumbel-softmax temperature of the cluster loss (default {D.tau})",
    )
    g.add_argument(
        "--no-gumbel",
        dest="gumbel",
        action="store_false",
        help="assign clusters by plain argmax, no Gumbel noise (the paper's 'Joint' ablation)",
    )
    g.add_argument(
        "--inv-reduction",
        choices=["sum", "mean"],
        help="sum the two symmetric invariance terms (default, as the published CluSiam code) or average "
        "them (SimSiam paper's 0.5 factor)",
    )
    g.add_argument(
        "--cluster-loss-impl",
        choices=CLUSTER_LOSS_IMPLS,
        help="cluster loss kernels: fused C++/CUDA op (auto when built) or the pure PyTorch reference",
    )


def _add_optimisation_flags(p: argparse.ArgumentParser) -> None:
    """Optimisation: epochs, steps, batch, lr schedule, SGD."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, metavar="N", help=f"epochs (default {D.epochs})")
    g.add_argument(
        "--max-steps",
        type=int,
        metavar="N",
        help="stop after N optimiser steps in total; the cosine then spans N steps unless --schedule-steps "
        "says otherwise (0: write the initial checkpoint only)",
    )
    g.add_argument(
        "--schedule-steps",
        type=int,
        metavar="N",
        help="optimiser steps the cosine lr decay spans (default: the run's length, min(--max-steps, "
        "epochs x steps/epoch); --resume keeps the checkpoint's unless this is given or the run grew longer)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"global batch size, split over torchrun processes (default {D.batch_size})",
    )
    g.add_argument(
        "--lr",
        type=finite_float,
        metavar="X",
        help=f"base lr; the run uses lr*batch/256 with cosine decay per step (default {D.lr})",
    )
    g.add_argument("--momentum", type=finite_float, metavar="X", help=f"SGD momentum (default {D.momentum})")
    g.add_argument(
        "--weight-decay", type=finite_float, metavar="X", help=f"SGD weight decay (default {D.weight_decay})"
    )
    g.add_argument(
        "--fix-pred-lr",
        action=argparse.BooleanOptionalAction,
        help=f"keep the predictor's lr constant (default {method_defaults_text('fix_pred_lr')}, as published)",
    )


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """Data: crops, workers, loader, normalisation statistics."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--crop-size", type=int, metavar="PX", help=f"random-resized-crop output size (default {D.crop_size})"
    )
    g.add_argument("--workers", type=int, metavar="N", help="data-loading worker processes (default min(8, CPUs))")
    g.add_argument(
        "--loader",
        choices=["torch", "dali"],
        help="torch: torchvision augmentation in CPU workers (default); dali: NVIDIA DALI pipeline",
    )
    g.add_argument(
        "--reader",
        choices=["auto", "cucim", "openslide", "tifffile"],
        help="slide reader for a manifest or .h5 DATA (default auto: each slide's own; every reader places "
        "patches as OpenSlide does)",
    )
    g.add_argument(
        "--decode-device",
        choices=["cpu", "cuda"],
        help="slide DATA: where patches are decoded (default cpu); cuda: cuCIM on the GPU (cuCIM backend "
        "and a GPU needed; OME-TIFF stays on the CPU). With --loader dali the patches then stay on the GPU "
        "through augmentation; with --loader torch they come back to the host for the torchvision recipe",
    )
    g.add_argument(
        "--max-stat-images",
        type=int,
        metavar="N",
        help=f"images sampled for the normalisation mean/std, cached in DIR/norm_stats.json (default {D.max_stat_images})",
    )


def _add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Runtime: seed, device, mixed precision, threads, BatchNorm sync."""
    g = p.add_argument_group("runtime")
    g.add_argument(
        "--seed", type=int, metavar="S", help=f"seed of weights, data order, augmentation and noise (default {D.seed})"
    )
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device (default auto: CUDA when available)")
    g.add_argument(
        "--amp",
        action="store_true",
        help="mixed precision: autocast bfloat16 (CPU, and CUDA where supported) or float16 with a gradient "
        "scaler; losses and normalisations stay float32",
    )
    g.add_argument("--amp-dtype", choices=["auto", "bf16", "fp16"], help="autocast dtype with --amp (default auto)")
    g.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch intra-op threads (default: torch's default, about one per core); independent of --workers, "
        "so CPU results do not depend on the loader",
    )
    g.add_argument(
        "--sync-bn",
        action="store_true",
        help="BatchNorm statistics over the global batch of all torchrun processes (CUDA: SyncBatchNorm; CPU: gloo)",
    )
    g.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW memory format on CUDA (channels_last is the default there)",
    )


def _add_checkpoint_flags(p: argparse.ArgumentParser) -> None:
    """Checkpoints and logs: resume, overwrite, save / keep / log intervals."""
    g = p.add_argument_group("checkpoints and logs")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in DIR exactly (model, optimiser, scaler, epoch, data order, RNG); "
        "flags given now override the saved ones, except those that define the model",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="start again even though DIR holds a checkpoint (the --demo default)"
    )
    g.add_argument(
        "--trust-pickle",
        action="store_true",
        help="--resume from a checkpoint that needs pickle to load (it can run code embedded in the file); "
        "without it such files are refused",
    )
    g.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        help=f"write DIR/checkpoint.pt every N epochs and at the end (default {D.save_every})",
    )
    g.add_argument(
        "--keep-every",
        type=int,
        metavar="N",
        help="also keep DIR/checkpoints/epoch_NNNN.pt every N epochs (default 0: off)",
    )
    g.add_argument(
        "--log-every",
        type=int,
        metavar="N",
        help=f"update the progress bar, steps.csv and the non-finite check every N steps (default {D.log_every})",
    )
    g.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        help="do not write DIR/tensorboard even when tensorboard is installed",
    )
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _add_collapse_flags(p: argparse.ArgumentParser) -> None:
    """Collapse monitors: the warning level and --stop-on-collapse."""
    g = p.add_argument_group("collapse monitors")
    g.add_argument(
        "--collapse-warn",
        type=finite_float,
        metavar="X",
        help=f"warn when backbone_std falls below X (default {D.collapse_warn}; a random ResNet reads 0.5-0.8)",
    )
    g.add_argument(
        "--rankme-window",
        type=int,
        metavar="N",
        help=f"backbone feature rows (the epoch's last, view 1) whose effective rank is backbone_rankme "
        f"(default {D.rankme_window})",
    )
    g.add_argument(
        "--stop-on-collapse",
        action=argparse.BooleanOptionalAction,
        help="stop (exit status 5) after --collapse-patience epochs in a row below --collapse-min-std or "
        "--collapse-min-rank; such epochs are not saved, so checkpoint.pt keeps the last good one",
    )
    g.add_argument(
        "--collapse-min-std",
        type=finite_float,
        metavar="X",
        help=f"--stop-on-collapse level of backbone_std (default {D.collapse_min_std})",
    )
    g.add_argument(
        "--collapse-min-rank",
        type=finite_float,
        metavar="X",
        help=f"--stop-on-collapse level of backbone_rankme (default {D.collapse_min_rank})",
    )
    g.add_argument(
        "--collapse-patience",
        type=int,
        metavar="N",
        help=f"epochs in a row below a level before --stop-on-collapse stops (default {D.collapse_patience})",
    )


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    """Outputs: the exported backbone."""
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--export-backbone",
        metavar="FILE",
        help="when the run ends (all epochs or --max-steps), write the backbone as a plain torchvision ResNet state_dict (no fc)",
    )


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line into a TrainConfig: defaults < --demo settings < saved config (--resume) <
    --config file < flags."""
    return config_and_data(argv)[0]


def config_and_data(argv: list[str] | None = None) -> tuple[TrainConfig, DataArg | None]:
    """The TrainConfig (see :func:`config_from_args`) and its DATA, resolved (once: ``train`` takes it as it is)."""
    return _config(vars(parse_args(build_parser(), argv)))


def _config(args: dict) -> tuple[TrainConfig, DataArg | None]:
    """The TrainConfig of the parsed flags (only those given, see build_parser) and its resolved DATA
    (None for --print-config, which reads no data)."""
    args.pop("config", None)
    print_only = args.pop("print_config", False)  # writes nothing, not even the --demo patches
    demo = args.pop("demo", False)
    values: dict = {}
    out = Path(args["out"])
    # The library's checks, made here before torch loads and before --demo writes (train() makes them again)
    ckpt = open_run_folder(
        out, resume=args.get("resume", False), trust_pickle=args.get("trust_pickle", False), method=args.get("method")
    )
    if ckpt is not None:
        saved = ckpt["config"]
        if "method" not in args and saved.get("method", D.method) != D.method:
            print(
                f"warning: --resume: {out / CHECKPOINT} is a {saved['method']} run, not {D.method} (the default "
                f"--method): continuing it as {saved['method']}; pass --method {saved['method']} to say so, or train "
                f"{D.method} in another --out",
                file=sys.stderr,
            )
        values.update(saved)
    elif demo:
        from .data.demo import DEMO_DEFAULTS

        values.update(DEMO_DEFAULTS, overwrite=True)
    if demo and "data" not in args and not values.get("data"):
        from .data.demo import make_demo_patches

        args["data"] = str(out / "demo_patches" if print_only else make_demo_patches(out / "demo_patches"))
    if "data" not in args and not values.get("data"):
        raise ValueError("DATA is required (a folder of patches or a tiler manifest.csv), or use --demo")
    values.update(args)
    if values.get("data"):
        values["data"] = str(Path(values["data"]).expanduser().absolute())  # --resume works from any folder
    cfg = TrainConfig.from_dict(values)
    cfg.check_given()  # names, ranges and paths before torch is imported (train() checks them all again)
    if print_only:
        return cfg, None
    data = resolve_data(cfg.data, accept=PATCH_KINDS)  # torch-free, as the checks above
    check_out_outside_data(cfg.out, data.path, data.kind)
    return cfg, data


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit status of the shared convention (clusiam_fast/cli/errors.py)."""
    return run_verb("train", lambda: _run(argv), {NonFiniteLossError: NON_FINITE, CollapseError: COLLAPSED})


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = vars(parse_args(parser, argv))
    print_only = args.get("print_config", False)
    cfg, data = _config(args)
    resolved = settings(parser, vars(cfg.resolved()), skip=NOT_SETTINGS)  # method defaults filled in
    if print_only:
        print(dump(resolved), end="")
        return 0
    starts = cfg.resume or cfg.overwrite or not (Path(cfg.out) / CHECKPOINT).exists()  # else train() refuses
    if starts and os.environ.get("RANK", "0") == "0":
        write_config(cfg.out, resolved)  # OUT/config.yaml: --config it to train the same run again
    from .training import train  # torch: only after the arguments parsed

    result = train(cfg, data=data)
    return 130 if result.status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())
