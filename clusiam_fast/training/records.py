"""The run's log: per-epoch rows (``OUT/log.csv``), per-window step rows (``OUT/steps.csv``),
and the same scalars in TensorBoard (``OUT/tensorboard``) when it is installed.

Rows live in memory and in the checkpoint, and the CSV files are rewritten
atomically at each epoch end, so after a resume they hold exactly the rows of
the steps the model has seen. A run that stops mid-epoch (--max-steps, Ctrl-C)
adds one last row for the steps done so far, ``partial`` = 1 (0 on whole epochs);
that row is never stored: the resumed run replaces it by the whole epoch's.

Collapse-monitor columns (see :mod:`.monitors`): ``backbone_std``,
``backbone_rankme``, ``projection_std`` and, with a cluster head, ``assigner_entropy``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_text

EPOCH_FIELDS = (
    "epoch",
    "step",
    "lr",
    "loss",
    "inv_loss",
    "cluster_loss",
    "active_clusters",
    "active_clusters_gumbel",
    "assigner_entropy",
    "backbone_std",
    "backbone_rankme",
    "projection_std",
    "images_per_s",
    "mfu",
    "memory_peak_gib",
    "skipped_images",
    "epoch_time_s",
    "partial",
)
STEP_FIELDS = ("step", "epoch", "lr", "loss", "inv_loss", "cluster_loss")


def _csv_text(fields: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _fmt(row[k])) for k in fields})
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class RunRecords:
    """Epoch and step rows, written as CSV (and TensorBoard scalars) by rank 0."""

    def __init__(self, out_dir: Path, *, tensorboard: bool, enabled: bool) -> None:
        self.out_dir, self.enabled = out_dir, enabled
        self.epochs: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self._want_tb, self._tb = tensorboard and enabled, None

    def start(self, step: int) -> None:
        """Open TensorBoard (dropping events after ``step``, as after a resume) when installed."""
        if not self._want_tb:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=step or None)

    def add_step(self, row: dict[str, Any]) -> None:
        self.steps.append(row)
        if self._tb is not None:
            for key in ("loss", "inv_loss", "cluster_loss", "lr"):
                if row.get(key) is not None:
                    self._tb.add_scalar(f"step/{key}", row[key], row["step"])

    def add_epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)
        if self._tb is not None:
            for key in EPOCH_FIELDS[2:-1]:
                if isinstance(row.get(key), (int, float)):
                    self._tb.add_scalar(f"epoch/{key}", row[key], row["epoch"])
            self._tb.flush()

    def write(self, partial: dict[str, Any] | None = None) -> None:
        """Rewrite log.csv and steps.csv; ``partial``: the unfinished epoch's row, written last."""
        if not self.enabled:
            return
        epochs = [{**row, "partial": 0} for row in self.epochs]
        if partial is not None:
            epochs.append({**partial, "partial": 1})
        atomic_write_text(self.out_dir / "log.csv", _csv_text(EPOCH_FIELDS, epochs))
        atomic_write_text(self.out_dir / "steps.csv", _csv_text(STEP_FIELDS, self.steps))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "steps": list(self.steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # rows of checkpoints from before the backbone monitors call the projection monitor collapse_std
        self.epochs = [
            {("projection_std" if k == "collapse_std" else k): v for k, v in row.items()} for row in state["epochs"]
        ]
        self.steps = list(state["steps"])
