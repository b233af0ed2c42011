"""What a run shows and writes about itself: console lines, progress bars, log.csv / steps.csv,
training.png, and the final report of what was written into OUT. Only global rank 0 shows
and writes (the skipped-image lines come from every rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .collapse import CollapsePolicy
from .config import TrainConfig
from .curves import plot_training
from .ddp import DistContext
from .position import RunPosition
from .records import RunRecords
from .run_folder import CHECKPOINT
from .run_setup import RunParts

_DESCRIBED = {
    CHECKPOINT: "model + optimiser + RNG state (load with clusiam_fast.models.load_checkpoint)",
    "log.csv": "per-epoch and per-step losses, lr, active clusters, collapse monitors, images/s, MFU, GPU memory peak",
    "training.png": "loss curves, active clusters, collapse monitors, lr",
}


class Reporter:
    """The run's console and log files, and the list of what it wrote into OUT."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, out: Path) -> None:
        self.cfg, self.ctx, self.out = cfg, ctx, out
        self.written: list[str] = []  # what this run wrote into OUT, for the final report
        self._reported_bad: set[str] = set()  # unreadable files named so far (each is named once per run)

    def log(self, message: str) -> None:
        if self.ctx.is_main:
            tqdm.write(message)

    def note(self, name: str) -> None:
        """Remember that ``name`` (relative to OUT) was written."""
        if name not in self.written:
            self.written.append(name)

    # ---------------------------------------------------------------- console
    def describe(self, parts: RunParts) -> str:
        """The run's one-line summary, shown before the first step."""
        cfg, ctx = self.cfg, self.ctx
        amp = (
            f"autocast {str(parts.trainstep.amp_dtype).replace('torch.', '')}"
            if parts.trainstep.amp_dtype
            else "float32"
        )
        alpha = (
            f", alpha {cfg.alpha}, K {cfg.num_clusters}, gumbel {'on' if cfg.gumbel else 'off'}"
            if cfg.has_clusters
            else ""
        )
        return (
            f"{cfg.method} {cfg.arch}{alpha} | {len(parts.source)} patches ({parts.source.kind} {parts.source.path}) | "
            f"batch {cfg.batch_size} over {ctx.world} process(es) on {ctx.device}, {amp} | crop {cfg.crop_size} | "
            f"lr {parts.init_lr:.4g} cosine over {parts.total_steps} steps ({parts.schedule_source}) | "
            f"{parts.steps_per_epoch} steps/epoch, "
            f"{cfg.epochs} epochs | loader {cfg.loader}"
        )

    def epoch_bar(self, epoch: int, total: int, initial: int) -> tqdm:
        """The progress bar of ``epoch`` (0-based), ``initial`` of its ``total`` steps done."""
        return tqdm(
            total=total,
            initial=initial,
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not (self.ctx.is_main and self.cfg.progress),
            dynamic_ncols=True,
            leave=True,
        )

    def show_step(self, bar: tqdm, means: dict[str, float], lr: float, rate: float, mfu: float | None) -> None:
        """The window's mean losses, the lr, the speed and the model FLOP utilisation on the bar."""
        postfix = {"loss": means["loss"], "inv": means["inv_loss"]}
        if self.cfg.has_clusters:
            postfix["clu"] = means["cluster_loss"]
        bar.set_postfix(
            {
                **{k: f"{v:.4f}" for k, v in postfix.items()},
                "lr": f"{lr:.3g}",
                "img/s": f"{rate:.0f}",
                "mfu": f"{mfu:.1%}",
            }
        )

    def report_skipped(self, skipped: list[str]) -> None:
        """Name the unreadable images this rank skipped: each once per run, repeats as a count."""
        rank = self.ctx.rank
        seen = set(self._reported_bad)
        self._reported_bad.update(skipped)
        for name in dict.fromkeys(n for n in skipped if n not in seen):
            tqdm.write(f"[rank {rank}] skipped unreadable image: {name}")
        if again := sum(n in seen for n in skipped):
            tqdm.write(f"[rank {rank}] skipped {again} unreadable image(s) named before")

    def summary_text(self, row: dict[str, Any]) -> str:
        """The progress summary of an epoch row: losses, clusters, collapse monitors, speed."""
        has_clusters = self.cfg.has_clusters

        def num(key: str, fmt: str) -> str:
            return "n/a" if row.get(key) is None else format(row[key], fmt)

        clusters = (
            f", active clusters {row['active_clusters']} (gumbel {row['active_clusters_gumbel']}), "
            f"assigner entropy {num('assigner_entropy', '.3f')}"
            if has_clusters
            else ""
        )
        return (
            f"loss {row['loss']:.4f} (inv {row['inv_loss']:.4f}"
            + (f", cluster {row['cluster_loss']:.4f}" if has_clusters else "")
            + f"){clusters}, backbone std {num('backbone_std', '.3f')}, RankMe {num('backbone_rankme', '.1f')}, "
            f"projection std {num('projection_std', '.3f')}, {row['images_per_s']:.1f} images/s, MFU {num('mfu', '.1%')}"
        )

    # ---------------------------------------------------------------- files
    def write_logs(self, records: RunRecords, partial: dict[str, Any] | None) -> None:
        """log.csv, steps.csv and training.png, with the unfinished epoch's row when the run stopped mid-epoch."""
        if not self.ctx.is_main:
            return
        cfg = self.cfg
        records.write(partial)
        self.note("log.csv")
        self.note("steps.csv")
        try:
            plot_training(
                records.epochs + ([{**partial, "partial": 1}] if partial else []),
                records.steps,
                self.out / "training.png",
                title=f"{cfg.method} - {self.out}",
                collapse_warn=cfg.collapse_warn,
                num_clusters=cfg.num_clusters if cfg.has_clusters else None,
                min_std=cfg.collapse_min_std if cfg.stop_on_collapse else None,
                min_rank=cfg.collapse_min_rank if cfg.stop_on_collapse else None,
            )
            self.note("training.png")
        except ImportError as error:  # matplotlib is optional for training
            self.log(f"training.png skipped: {error}")

    # ---------------------------------------------------------------- the end
    def final_report(self, status: str, backbone: Path | None, position: RunPosition, collapse: CollapsePolicy) -> None:
        """How the run ended, what it left unsaved, and what it wrote into OUT."""
        cfg = self.cfg
        unsaved = collapse.holds_back  # the state is below the thresholds
        lines = [self._ending(status, position, unsaved)]
        if unsaved and status != "complete":
            lines.append(
                f"not saved, the last epoch was below the collapse thresholds ({collapse.why}): {position.on_disk()}"
            )
        if CHECKPOINT not in self.written:
            why = (
                f"--max-steps {cfg.max_steps} already reached"
                if status == "max_steps"
                else f"--epochs {cfg.epochs}, {position.epoch} done"
            )
            lines.append(f"nothing to train ({why}): no checkpoint or log written")
        lines += self._outputs(backbone)
        if backbone is not None:
            lines.append(f"backbone (torchvision state_dict, no fc): {backbone}")
        elif cfg.export_backbone:
            lines.append("--export-backbone: not written for an interrupted run (it is written when the run ends)")
        self.log("\n".join(lines))

    def _ending(self, status: str, position: RunPosition, unsaved: bool) -> str:
        epoch, step = position.epoch, position.step
        return {
            "complete": f"training complete ({epoch} epochs, {step} steps)",
            "interrupted": f"interrupted at epoch {epoch + 1}, step {step}: "
            + ("" if unsaved else "checkpoint saved; run the same command with --resume to continue exactly"),
            "max_steps": f"stopped at --max-steps {self.cfg.max_steps} (epoch {epoch + 1}, step {step}); "
            "--resume with a larger --max-steps continues",
        }[status]

    def _outputs(self, backbone: Path | None) -> list[str]:
        """The lines that list OUT's files, the described ones with what they hold."""
        written = [n for n in self.written if n != "steps.csv" and (backbone is None or n != str(backbone))]
        if not written:
            return []
        lines = [f"outputs in {self.out}/:"]
        plain = []
        for name in written:
            if name in _DESCRIBED:
                shown = "log.csv, steps.csv" if name == "log.csv" else name
                lines.append(f"  {shown}  {_DESCRIBED[name]}")
            else:
                plain.append(name)
        if plain:
            lines.append("  " + ", ".join(plain))
        return lines
