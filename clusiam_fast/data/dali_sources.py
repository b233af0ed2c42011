"""Where the DALI pipeline's images come from: image files, webdataset shards, or slides.

Each source builds the front of the graph for one epoch of one rank: ``graph()`` returns
the decoded HWC uint8 RGB images on the pipeline's device, and ``len(source)`` is the
number of samples.

Epochs and ranks (files and slides): the epoch's order is a permutation of all samples
drawn from ``(seed, epoch)`` (identical on every rank); rank ``r`` of ``R`` takes the
``r``-th of ``R`` equal contiguous slices of ``n // R`` samples, so ranks are disjoint and
all see the same number of batches (as ``DistributedSampler(drop_last=True)``). Files
are fed as paths through ``external_source`` to ``fn.io.file.read`` (DALI's threads read
them) rather than ``fn.readers.file``: that reader fixes its list when built and shuffles
with a buffer or with its own per-epoch seed, while this plan is exact, global and a pure
function of (seed, epoch), and the loader knows which files each batch holds (needed to
name a file that fails to decode).

Shards: ``fn.readers.webdataset`` with DALI's own sharding (``shard_id``/``num_shards``
rotated by the epoch) and its shuffle buffer; the packer shuffles samples when writing,
so buffer shuffling on top of a random stored order is enough.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .resolve import DataLike
from .tolerant import first_readable

log = logging.getLogger("clusiam_fast.data.dali")

SHARD_IMAGE_EXTS = "jpg;jpeg;png;tif;tiff"
# Share of each batch's JPEGs that nvImageCodec sends to the GPU's hardware JPEG decoder (A100,
# H100, H200 have one; elsewhere it is ignored), the rest to CUDA decoding. DALI's own default,
# set explicitly so that runs say what they used; benchmarks/gpu_loader_check.py sweeps it.
HW_DECODER_LOAD = 0.65


def epoch_plan(n: int, *, seed: int, epoch: int, shard_id: int, num_shards: int) -> np.ndarray:
    """Indices (into ``range(n)``) rank ``shard_id`` visits in ``epoch``, in order."""
    perm = np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n)
    per_rank = n // num_shards
    return perm[shard_id * per_rank : (shard_id + 1) * per_rank]


def substitute(plan: np.ndarray, bad: set[int]) -> np.ndarray:
    """``plan`` with every bad index replaced by the next good one in plan order (cyclic).

    Keeps the epoch length (and so every rank's batch count) unchanged when a file
    turns out to be undecodable in the middle of training.
    """
    if not bad:
        return plan
    good_mask = ~np.isin(plan, np.fromiter(bad, dtype=np.int64, count=len(bad)))
    good_pos = np.flatnonzero(good_mask)
    if good_pos.size == 0:
        raise RuntimeError("every image of this rank's epoch is undecodable; check the data")
    out = plan.copy()
    bad_pos = np.flatnonzero(~good_mask)
    nxt = np.searchsorted(good_pos, bad_pos) % good_pos.size
    out[bad_pos] = plan[good_pos[nxt]]
    return out


class _PathBatches:
    """Batch callback for ``external_source``: iteration i -> encoded paths of batch ``start + i``.

    Batches past the end wrap around (the pipeline prefetches a little beyond the epoch).
    """

    def __init__(self, paths: Sequence[str], order: np.ndarray, batch_size: int, start: int) -> None:
        self.encoded = [np.frombuffer(os.fsencode(paths[i]), dtype=np.uint8) for i in order]
        self.batch_size, self.start = batch_size, start

    def __call__(self, iteration: int):
        n = len(self.encoded)
        first = ((self.start + iteration) * self.batch_size) % n
        return [self.encoded[(first + j) % n] for j in range(self.batch_size)]


def _decode(raw, gpu: bool, hw_decoder_load: float = HW_DECODER_LOAD):
    """Decoded HWC uint8 RGB images (nvJPEG, ``mixed``, when ``gpu``; ``hw_decoder_load``: see HW_DECODER_LOAD)."""
    from nvidia.dali import fn, types

    if gpu:
        return fn.decoders.image(raw, device="mixed", output_type=types.RGB, hw_decoder_load=float(hw_decoder_load))
    return fn.decoders.image(raw, device="cpu", output_type=types.RGB)


class FileSource:
    """Image files, read by DALI threads and decoded on the CPU or by nvJPEG (``mixed``)."""

    kind = "files"

    def __init__(self, paths: Sequence[str | os.PathLike], hw_decoder_load: float = HW_DECODER_LOAD) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.hw_decoder_load = hw_decoder_load
        if not self.paths:
            raise ValueError("build_dali_loader: the list of image files is empty")
        self.bad: dict[int, str] = {}  # index -> reason, found while training

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index]

    def order(self, plan: np.ndarray) -> np.ndarray:
        return substitute(plan, set(self.bad))

    def graph(self, *, order: np.ndarray, batch_size: int, start: int, gpu: bool, **_):
        from nvidia.dali import fn, types

        paths = fn.external_source(
            source=_PathBatches(self.paths, order, batch_size, start),
            batch=True,
            dtype=types.UINT8,
            ndim=1,
            name="paths",
        )
        raw = fn.io.file.read(paths)
        return _decode(raw, gpu, self.hw_decoder_load)

    def pipeline_kwargs(self, gpu: bool) -> dict:
        return {}


class ShardSource:
    """Webdataset tar shards written by :mod:`clusiam_fast.data.shards` (index files beside them)."""

    kind = "shards"

    def __init__(self, tars: Sequence[str | os.PathLike], hw_decoder_load: float = HW_DECODER_LOAD) -> None:
        self.tars = [os.fspath(t) for t in tars]
        self.hw_decoder_load = hw_decoder_load
        self.indexes = [str(Path(t).with_suffix(".idx")) for t in self.tars]
        missing = [i for i in self.indexes if not os.path.exists(i)]
        if missing:
            raise FileNotFoundError(
                f"webdataset index {missing[0]} is missing ({len(missing)} in all); write shards with "
                "`python -m clusiam_fast.shards`, which writes the .idx files"
            )
        self.count = sum(_index_count(i) for i in self.indexes)
        if self.count == 0:
            raise ValueError(f"the shards {self.tars[0]}... hold no samples")

    def __len__(self) -> int:
        return self.count

    def graph(self, *, epoch: int, seed: int, shard_id: int, num_shards: int, gpu: bool, **_):
        from nvidia.dali import fn

        raw = fn.readers.webdataset(
            paths=self.tars,
            index_paths=self.indexes,
            ext=[SHARD_IMAGE_EXTS],
            missing_component_behavior="skip",
            random_shuffle=True,
            initial_fill=min(4096, max(1, self.count // max(1, num_shards))),
            seed=int(seed),
            shard_id=(shard_id + epoch) % num_shards,
            num_shards=num_shards,
            pad_last_batch=True,
            name="Reader",
        )
        return _decode(raw, gpu, self.hw_decoder_load)

    def pipeline_kwargs(self, gpu: bool) -> dict:
        return {}


def _index_count(index_path: str) -> int:
    """Number of samples in a DALI webdataset index (first line ``v1.2 <count>``)."""
    with open(index_path) as f:
        first = f.readline().split()
    if len(first) != 2 or not first[1].isdigit():
        raise ValueError(f"{index_path} is not a DALI webdataset index (first line {' '.join(first)!r})")
    return int(first[1])


def describe_patch(dataset, index: int) -> str:
    """``slide_id (x=..., y=...)`` of item ``index`` of a SlidePatchDataset, for reports."""
    try:
        slide, x, y = dataset.locate(index)
        return f"{dataset.slides[slide].slide_id} (x={x}, y={y})"
    except Exception:
        return f"patch #{index}"


def readable_patch(dataset, order: np.ndarray, pos: int, read):
    """``read(index)`` of the patch at ``pos`` of ``order``, or of the next readable one; each skipped one is logged by name."""

    def describe(k: int) -> str:
        return describe_patch(dataset, int(order[k]))

    patch, skipped = first_readable(lambda k: read(int(order[k])), pos % len(order), len(order), describe)
    for item in skipped:
        log.warning("skipping unreadable slide patch %s", item)
    return patch


class _SlideBatches:
    """Batch callback run by DALI's Python worker processes: batch -> list of HWC uint8 patches.

    A batch is read with ``SlidePatchDataset.__getitems__`` (each slide's patches in one
    batched, multi-threaded read). If that fails, the batch is read patch by patch and a
    patch that cannot be read is reported (slide, x, y, error) and replaced by the next
    readable one of the plan, so one bad region never stops the epoch.
    """

    def __init__(self, dataset, order: np.ndarray, batch_size: int, start: int) -> None:
        self.dataset, self.order = dataset, order
        self.batch_size, self.start = batch_size, start

    def __call__(self, batch_info):
        n = len(self.order)
        first = (self.start + batch_info.iteration) * self.batch_size
        indices = [int(self.order[(first + j) % n]) for j in range(self.batch_size)]
        try:
            return [_as_patch(item) for item in self.dataset.__getitems__(indices)]
        except Exception:
            return [self._one(first + j) for j in range(self.batch_size)]

    def _one(self, pos: int):
        return readable_patch(self.dataset, self.order, pos, lambda i: _as_patch(self.dataset[i]))


def _as_patch(item) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(item, dtype=np.uint8)[:, :, :3])


class _GpuSlideBatches:
    """Batch callback of the GPU slide source: iteration -> (B, S, S, 3) uint8 CUDA tensor.

    Patches are decoded by cuCIM on the GPU (each slide's patches of a batch in one batched
    ROI decode), resized there when needed and handed to DALI as a device tensor: the host
    only touches coordinates. A :class:`~.read_ahead.ReadAhead` thread keeps ``depth`` batches
    decoded ahead of the pipeline. A batch that fails is read patch by patch, as on the CPU.
    """

    def __init__(self, dataset, order: np.ndarray, batch_size: int, start: int, depth: int) -> None:
        from .read_ahead import ReadAhead

        self.dataset, self.order = dataset, order
        self.batch_size, self.start = batch_size, start
        self.ahead = ReadAhead(self._read, depth)

    def _read(self, iteration: int):
        import torch

        n = len(self.order)
        first = (self.start + iteration) * self.batch_size
        try:
            patches = self.dataset.read_batch([int(self.order[(first + j) % n]) for j in range(self.batch_size)])
        except Exception:
            patches = [self._one(first + j) for j in range(self.batch_size)]
        batch = torch.stack(patches)
        torch.cuda.current_stream().synchronize()  # decoded and resized before DALI's stream reads it
        return batch

    def _one(self, pos: int):
        return readable_patch(self.dataset, self.order, pos, lambda i: self.dataset.read_batch([i])[0])

    def __call__(self, iteration: int):
        return self.ahead(iteration)


class SlideSource:
    """Patches read on the fly from slides (tiler manifest or CLAM .h5 files).

    ``decode_device="cpu"``: ``workers`` DALI Python worker processes read and decode them
    (host arrays). ``decode_device="cuda"``: cuCIM decodes them on the GPU in this process,
    ``read_ahead`` batches ahead, and they enter the pipeline as device tensors
    (:class:`_GpuSlideBatches`; needs the GPU pipeline).
    """

    kind = "slides"

    def __init__(
        self,
        manifest_or_h5: DataLike,
        *,
        workers: int = 2,
        reader: str | None = None,
        decode_device: str = "cpu",
        read_ahead: int | None = None,
    ) -> None:
        from .read_ahead import DEFAULT_DEPTH
        from .slide_dataset import SlidePatchDataset

        self.decode_device = decode_device
        backend = None if reader in (None, "auto") else reader  # --reader; None: each slide's own
        self.dataset = SlidePatchDataset(
            manifest_or_h5, transform=np.asarray, backend=backend, decode_device=decode_device
        )
        self.workers = max(1, int(workers))
        self.read_ahead = DEFAULT_DEPTH if read_ahead is None else int(read_ahead)
        self.batches = None

    def __len__(self) -> int:
        return len(self.dataset)

    def order(self, plan: np.ndarray) -> np.ndarray:
        return plan

    def graph(self, *, order: np.ndarray, batch_size: int, start: int, gpu: bool, **_):
        from nvidia.dali import fn, types

        if self.decode_device == "cuda":
            if self.batches is not None:
                self.batches.ahead.close()
            self.batches = _GpuSlideBatches(self.dataset, order, batch_size, start, self.read_ahead)
            return fn.external_source(
                source=self.batches, batch=True, device="gpu", dtype=types.UINT8, ndim=3, layout="HWC"
            )
        patches = fn.external_source(
            source=_SlideBatches(self.dataset, order, batch_size, start),
            batch=True,
            batch_info=True,
            parallel=True,
            prefetch_queue_depth=max(2, self.workers),
            dtype=types.UINT8,
            ndim=3,
            layout="HWC",
        )
        return patches.gpu() if gpu else patches

    def pipeline_kwargs(self, gpu: bool) -> dict:
        import torch

        if self.decode_device == "cuda":
            return {}  # read in this process (GPU decode), no Python workers
        # fork is quick and needs no __main__ guard, but is unsafe once CUDA is initialised
        # (by torch, or by DALI's previous GPU pipeline); spawn needs the caller's __main__ guarded.
        method = "spawn" if gpu or torch.cuda.is_initialized() else "fork"
        return {"py_num_workers": self.workers, "py_start_method": method}
