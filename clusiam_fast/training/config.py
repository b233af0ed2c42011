"""Training configuration: one dataclass, the method's defaults filled in by :meth:`TrainConfig.resolved`.

This module imports neither torch nor the models (``--help`` stays fast): the per-method
defaults are the method's row of the torch-free table, ``clusiam_fast/choices.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The torch-free table of names (clusiam_fast/choices.py), re-exported for the CLI and the study.
from ..choices import (  # noqa: F401
    ARCH_NAMES,
    CLUSTER_LOSS_IMPLS,
    CLUSTER_METHOD_NAMES,
    HEAD_KEYS,
    METHOD_NAMES,
    METHOD_TABLE,
)
from ..cli.errors import OutPathError, check_out_path  # noqa: F401  (--out checks shared by the verbs; exit status 4)


class NonFiniteLossError(RuntimeError):
    """The loss or the weights became NaN or infinite; the last good checkpoint was left untouched."""


class CollapseError(RuntimeError):
    """--stop-on-collapse: a backbone monitor stayed below its threshold; the last good checkpoint was kept.
    The CLI exits with status 5."""


def check_out_outside_data(out: str | os.PathLike, data: str | os.PathLike, kind: str) -> None:
    """--out may not lie inside a DATA folder of images (manifests and coordinate files list their patches)."""
    if kind != "folder":
        return
    data_dir, out_dir = Path(data).resolve(), Path(out).resolve()
    if out_dir == data_dir or data_dir in out_dir.parents:
        raise ValueError(
            f"--out {out} is inside DATA {data}: the images written there (training.png, "
            "--demo patches) would be read as training data; choose an --out outside DATA"
        )


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint as ``config``.

    ``None`` means "the method's default" until :meth:`resolved` fills it in. The
    field names match the CLI flags (``--num-clusters`` -> ``num_clusters``).
    """

    data: str | None = None
    out: str = "runs/train"
    # model
    method: str = "clusiam"
    arch: str = "resnet18"
    num_clusters: int = 100
    projector_end: str = "bn"
    out_dim: int | None = None
    proj_hidden: int | None = None
    pred_hidden: int | None = None
    pred_first_bias: bool | None = None
    cluster_hidden: int | None = None
    ema_momentum: float | None = None
    zero_init_residual: bool = True
    # loss
    alpha: float | None = None
    tau: float = 1.0
    gumbel: bool = True
    inv_reduction: str = "sum"
    cluster_loss_impl: str = "auto"
    # optimisation
    epochs: int = 50
    max_steps: int | None = None
    schedule_steps: int | None = None  # steps the cosine spans; None: min(--max-steps, epochs x steps/epoch)
    batch_size: int = 512
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    fix_pred_lr: bool | None = None
    # data
    crop_size: int = 224
    workers: int = dataclasses.field(default_factory=lambda: min(8, os.cpu_count() or 1))
    loader: str = "torch"
    reader: str = "auto"  # slide reader for manifest / h5 DATA: auto (each slide's own) | cucim | openslide | tifffile
    decode_device: str = "cpu"  # slide DATA: cpu or cuda (cuCIM GPU decode)
    max_stat_images: int = 2000
    # runtime
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"
    sync_bn: bool = False
    threads: int | None = None  # torch intra-op threads; None: torch's default (not tied to --workers)
    channels_last: bool = True
    # outputs
    resume: bool = False
    overwrite: bool = False
    trust_pickle: bool = False  # --resume may read a checkpoint that needs pickle (never saved as True)
    save_every: int = 1
    keep_every: int = 0
    log_every: int = 10
    tensorboard: bool = True
    progress: bool = True
    export_backbone: str | None = None
    collapse_warn: float = 0.2  # warn when backbone_std falls below this
    # collapse monitors (see training/monitors.py)
    rankme_window: int = 2048
    stop_on_collapse: bool = False
    collapse_min_std: float = 0.1
    collapse_min_rank: float = 2.0
    collapse_patience: int = 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, ignoring keys this version does not know (old checkpoints)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def resolved(self) -> TrainConfig:
        """A copy with the method's defaults (its row of the choices table) filled in and every value checked."""
        cfg = dataclasses.replace(self)
        cfg._check_choices()
        row = METHOD_TABLE[cfg.method]
        for key in (*HEAD_KEYS, "ema_momentum", "alpha", "fix_pred_lr"):
            if getattr(cfg, key) is None:
                setattr(cfg, key, row[key])
        if row["ema_momentum"] is None:  # no momentum target: the flag means nothing
            cfg.ema_momentum = None
        cfg._check_values()
        return cfg

    def check_given(self) -> None:
        """The checks that need no method defaults, so no torch: names, and the range of every value given.

        The CLI runs them before importing torch; :meth:`resolved` runs them all again."""
        self._check_choices()
        self._check_values()

    @property
    def has_clusters(self) -> bool:
        return self.method in CLUSTER_METHOD_NAMES

    def _check_choices(self) -> None:
        choices = {
            "method": METHOD_NAMES,
            "arch": ARCH_NAMES,
            "projector_end": ("bn", "linear"),
            "inv_reduction": ("sum", "mean"),
            "cluster_loss_impl": CLUSTER_LOSS_IMPLS,
            "loader": ("torch", "dali"),
            "reader": ("auto", "cucim", "openslide", "tifffile"),
            "decode_device": ("cpu", "cuda"),
            "device": ("auto", "cpu", "cuda"),
            "amp_dtype": ("auto", "bf16", "fp16"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )

    def _check_values(self) -> None:
        def need(ok: bool, flag: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{flag} {what}, got {getattr(self, flag.replace('-', '_'))!r}")

        for flag in (
            "lr",
            "momentum",
            "weight-decay",
            "tau",
            "alpha",
            "ema-momentum",
            "collapse-warn",
            "collapse-min-std",
            "collapse-min-rank",
        ):
            value = getattr(self, flag.replace("-", "_"))
            need(value is None or math.isfinite(value), flag, "must be a finite number")
        need(self.alpha is None or 0.0 <= self.alpha <= 1.0, "alpha", "must be in [0, 1]")
        if not self.has_clusters and self.alpha not in (None, 0.0):
            raise ValueError(
                f"--alpha weighs the cluster loss of {' / '.join(CLUSTER_METHOD_NAMES)}; {self.method} has none "
                f"(got {self.alpha})"
            )
        need(self.num_clusters >= 1, "num-clusters", "must be >= 1")
        need(self.tau > 0, "tau", "must be > 0")
        need(self.epochs >= 0, "epochs", "must be >= 0")
        need(self.max_steps is None or self.max_steps >= 0, "max-steps", "must be >= 0")
        need(self.schedule_steps is None or self.schedule_steps >= 1, "schedule-steps", "must be >= 1")
        need(self.rankme_window >= 2, "rankme-window", "must be >= 2")
        need(self.collapse_patience >= 1, "collapse-patience", "must be >= 1")
        need(self.batch_size >= 2, "batch-size", "must be >= 2 (BatchNorm needs two samples)")
        need(self.lr > 0, "lr", "must be > 0")
        need(self.momentum >= 0, "momentum", "must be >= 0")
        need(self.weight_decay >= 0, "weight-decay", "must be >= 0")
        need(self.threads is None or self.threads >= 1, "threads", "must be >= 1")
        need(self.crop_size >= 16, "crop-size", "must be >= 16")
        need(self.workers >= 0, "workers", "must be >= 0")
        need(self.save_every >= 1, "save-every", "must be >= 1")
        need(self.keep_every >= 0, "keep-every", "must be >= 0")
        need(self.log_every >= 1, "log-every", "must be >= 1")
        need(self.max_stat_images >= 1, "max-stat-images", "must be >= 1")
        if self.ema_momentum is not None:
            need(0.0 <= self.ema_momentum <= 1.0, "ema-momentum", "must be in [0, 1]")
