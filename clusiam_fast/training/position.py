"""Where a run stands: epochs and steps done, the unfinished epoch's row, and the checkpoint on disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class RunPosition:
    """The counters a checkpoint saves and a resume restores, shared by the trainer's parts."""

    ckpt_path: Path
    epoch: int = 0  # completed epochs
    epoch_step: int = 0  # batches done in the unfinished epoch (0 at an epoch boundary)
    step: int = 0  # optimiser steps so far
    saved: tuple[int, int] | None = None  # (epoch, step) of the checkpoint on disk
    partial: dict[str, Any] | None = None  # the unfinished epoch's log.csv row, when the run stopped mid-epoch

    def max_steps_reached(self, max_steps: int | None) -> bool:
        return max_steps is not None and self.step >= max_steps

    def where(self) -> str:
        """The place in the run, as the error messages name it."""
        if self.epoch_step == 0:
            return f"the end of epoch {self.epoch}, step {self.step}"
        return f"epoch {self.epoch + 1}, step {self.step}"

    def on_disk(self) -> str:
        """What a run that stops now leaves behind."""
        if self.saved is None:
            return "no checkpoint has been written yet"
        epoch, step = self.saved
        return f"the checkpoint on disk, {self.ckpt_path} (epoch {epoch}), step {step}, is untouched"
