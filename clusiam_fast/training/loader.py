"""Where batches come from: one function, :func:`build_train_loader`, behind the loop.

``--loader torch`` (default): a DataLoader over a patch folder or a tiler manifest,
the paper's augmentation on CPU workers. Each sample's two views are drawn from a
seed that depends only on (run seed, epoch, sample index), so the batches do not
depend on the number of workers and a resumed run sees exactly the batches an
uninterrupted one would (skipping the first ``skip`` batches of an epoch costs no
decoding). An unreadable image is reported by name and replaced by the next one,
so batch shapes never change.

``--loader dali``: ``clusiam_fast.data.dali.build_dali_loader`` (GPU or CPU DALI
pipeline; its batches depend only on (seed, epoch, rank), so resume stays exact).

``--decode-device cuda`` (slide DATA): cuCIM decodes the patches on the GPU. With the DALI
loader they stay there through augmentation; with the torch loader each patch comes back
to the host for the torchvision recipe (workers are then spawned, not forked: CUDA).

Every loader here has ``__iter__`` yielding ``(view1, view2)``, ``__len__`` (batches
per epoch on this rank), ``set_epoch(epoch, skip=0)`` and ``pop_skipped()``.
"""

from __future__ import annotations

import hashlib
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..data.augment import TwoViews, paper_augmentation
from ..data.patch_folder import PatchFolder
from ..data.resolve import PATCH_KINDS, DataArg, as_data_arg
from ..data.tolerant import first_readable
from .config import TrainConfig
from .ddp import DistContext


@dataclass
class DataSource:
    """DATA opened for training: the resolved argument, a dataset of PIL images over it and its fingerprint."""

    data: DataArg  # kind "folder", "manifest" or "coords" (see clusiam_fast.data.resolve)
    dataset: Any  # indexable, item -> PIL RGB image
    fingerprint: str  # identifies the data for the normalisation-stats cache

    @property
    def kind(self) -> str:
        return self.data.kind

    @property
    def path(self) -> Path:
        return self.data.path

    def __len__(self) -> int:
        return len(self.dataset)


def open_source(
    data: DataArg | str | os.PathLike | None, reader: str = "auto", decode_device: str = "cpu"
) -> DataSource:
    """The training dataset of DATA: a resolved :class:`DataArg` as it is (a path is resolved here, once);
    ``reader``: the slide reader (auto: each slide's own).

    ``decode_device="cuda"``: slide patches are decoded by cuCIM on the GPU (slide DATA only)."""
    if data is None:
        raise ValueError("no DATA given: pass a folder of image patches or a tiler manifest.csv (or use --demo)")
    arg = as_data_arg(data, accept=PATCH_KINDS)
    if arg.kind == "folder":
        if decode_device != "cpu":
            raise ValueError(
                f"--decode-device {decode_device} decodes slide patches with cuCIM; DATA {arg.path} is "
                f"{arg.describe()}: use --decode-device cpu"
            )
        files = list(arg.files)
        digest = hashlib.sha1("\n".join(str(f.relative_to(arg.path)) for f in files).encode()).hexdigest()
        return DataSource(arg, PatchFolder(files), f"folder:{arg.path.resolve()}:{len(files)}:{digest}")
    try:
        from ..data.slide_dataset import SlidePatchDataset
    except ImportError as error:
        raise RuntimeError(
            f"DATA {arg.path} is {arg.describe()}, but clusiam_fast.data.slide_dataset could not be imported "
            f"({error}); install the slide extras (`pip install -e '.[slides]'`) or pass a folder of patches"
        ) from error
    backend = None if reader == "auto" else reader  # --reader; auto: each slide's own
    dataset = SlidePatchDataset(arg, transform=None, backend=backend, decode_device=decode_device)
    if len(dataset) == 0:
        raise ValueError(f"{arg.describe()} lists no patches")
    stamp = ":".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (arg.files or (arg.path,)))
    return DataSource(arg, dataset, f"{arg.kind}:{arg.path.resolve()}:{stamp}:{len(dataset)}")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed uint64 hash, vectorised (wrap-around arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices: Sequence[int]) -> np.ndarray:
    """The augmentation seed (int63) of each sample index in one epoch: a hash of (seed, epoch, index)."""
    key = _splitmix64(np.array([seed], np.uint64)) ^ np.uint64(epoch)
    return _splitmix64(_splitmix64(key) ^ np.asarray(indices, np.uint64)) >> np.uint64(1)


class ResumableSampler(Sampler):
    """DistributedSampler order (shuffled by seed + epoch, split over ranks), yielding
    ``(index, sample_seed)``; ``set_epoch(epoch, skip)`` starts after ``skip`` batches."""

    def __init__(self, size: int, *, batch_size: int, seed: int, rank: int, world: int) -> None:
        self.inner = DistributedSampler(
            range(size), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size, self.seed, self.epoch, self.skip = batch_size, seed, 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(self.inner)[self.skip * self.batch_size :]
        seeds = sample_seeds(self.seed, self.epoch, indices).tolist()
        return zip(indices, seeds)

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip * self.batch_size, 0)


class TwoViewDataset(Dataset):
    """``(index, seed)`` -> ``(view1, view2, skipped_names)`` with the transform's randomness seeded."""

    def __init__(self, base: Any, transform: TwoViews) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def _describe(self, index: int) -> str:
        if hasattr(self.base, "describe"):
            return self.base.describe(index)
        if hasattr(self.base, "locate") and hasattr(self.base, "slides"):  # SlidePatchDataset
            slide, x, y = self.base.locate(index)
            return f"slide {self.base.slides[slide].slide_id} patch at ({x}, {y})"
        return f"item {index}"

    def _views(self, img, seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        img, skipped = first_readable(self.base.__getitem__, index, len(self.base), self._describe)
        return (*self._views(img, seed), skipped)

    def __getitems__(self, items: Sequence[tuple[int, int]]):
        """A batch; uses the base dataset's batched read (slides) when it has one."""
        batched = getattr(self.base, "__getitems__", None)
        if batched is not None:
            try:
                images = batched([index for index, _ in items])
            except Exception:  # a bad patch in the batch: fall back to item by item, which reports it
                images = None
            if images is not None:
                return [(*self._views(img, seed), []) for img, (_, seed) in zip(images, items)]
        return [self[item] for item in items]


def _worker_init(_: int) -> None:
    """Loader workers ignore Ctrl-C / SIGTERM: the main process finishes its step, saves, then stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def collate_views(items: Sequence[tuple[torch.Tensor, torch.Tensor, list[str]]]):
    v1 = torch.stack([it[0] for it in items])
    v2 = torch.stack([it[1] for it in items])
    return v1, v2, [name for it in items for name in it[2]]


class TorchTrainLoader:
    """DataLoader of two-view batches for this rank (see the module docstring)."""

    def __init__(self, source: DataSource, cfg: TrainConfig, ctx: DistContext, mean, std, per_rank_batch: int) -> None:
        transform = TwoViews(paper_augmentation(cfg.crop_size, mean, std))
        self.sampler = ResumableSampler(
            len(source), batch_size=per_rank_batch, seed=cfg.seed, rank=ctx.rank, world=ctx.world
        )
        self.loader = DataLoader(
            TwoViewDataset(source.dataset, transform),
            batch_size=per_rank_batch,
            sampler=self.sampler,
            num_workers=cfg.workers,
            collate_fn=collate_views,
            pin_memory=ctx.device.type == "cuda",
            drop_last=True,
            persistent_workers=cfg.workers > 0,
            worker_init_fn=_worker_init,
            # GPU decode in workers: CUDA cannot be used in forked processes
            multiprocessing_context="spawn" if cfg.decode_device == "cuda" and cfg.workers > 0 else None,
            generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
        )
        self._skipped: list[str] = []

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch, skip)

    def __len__(self) -> int:
        return len(self.sampler.inner) // self.loader.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for v1, v2, skipped in self.loader:
            self._skipped.extend(skipped)
            yield v1, v2

    def pop_skipped(self) -> list[str]:
        out, self._skipped = self._skipped, []
        return out

    def close(self) -> None:
        """Stop the persistent workers now. Left to interpreter exit, they would deadlock: exit joins
        them after a SIGTERM they ignore (``_worker_init``), and they wait for the live parent."""
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()
            self.loader._iterator = None


class DaliTrainLoader:
    """Adapter over ``clusiam_fast.data.dali.build_dali_loader`` (built once; ``set_epoch`` per epoch).

    The DALI loader's batches are a pure function of (seed, epoch, rank), so resuming
    mid-epoch replays and drops the first ``skip`` batches: exact, at the cost of
    re-running them through the pipeline.
    """

    def __init__(self, source: DataSource, cfg: TrainConfig, ctx: DistContext, mean, std, per_rank_batch: int) -> None:
        try:
            from ..data.dali import build_dali_loader
        except ImportError as error:
            raise RuntimeError(
                f"--loader dali: the DALI pipeline could not be imported ({error}); install it with "
                "`pip install -e '.[dali]'` or use --loader torch"
            ) from error
        try:
            self.loader = build_dali_loader(
                source.data,
                batch_size=per_rank_batch,
                crop_size=cfg.crop_size,
                mean=list(mean),
                std=list(std),
                device="gpu" if ctx.device.type == "cuda" else "cpu",
                seed=cfg.seed,
                shard_id=ctx.rank,
                num_shards=ctx.world,
                num_threads=max(cfg.workers, 1),
                drop_last=True,
                reader=cfg.reader,
                decode_device=cfg.decode_device,
            )
        except ImportError as error:
            raise RuntimeError(f"--loader dali: {error}; or use --loader torch") from error
        self.skip, self._reported = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.loader.set_epoch(epoch)
        self.skip = skip

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (v1, v2) in enumerate(self.loader):
            if i >= self.skip:
                yield v1, v2

    def pop_skipped(self) -> list[str]:
        skipped = getattr(self.loader, "skipped", [])
        new, self._reported = skipped[self._reported :], len(skipped)
        return [f"{name} ({reason})" for name, reason in new]


def build_train_loader(source: DataSource, cfg: TrainConfig, ctx: DistContext, mean, std):
    """The loader named by ``cfg.loader`` for this rank (per-rank batch = global batch / world)."""
    if cfg.batch_size % ctx.world:
        raise ValueError(f"--batch-size {cfg.batch_size} (global) is not divisible by the {ctx.world} processes")
    per_rank = cfg.batch_size // ctx.world
    if cfg.loader == "dali":
        return DaliTrainLoader(source, cfg, ctx, mean, std, per_rank)
    return TorchTrainLoader(source, cfg, ctx, mean, std, per_rank)
