"""Two augmented views per patch from an NVIDIA DALI pipeline, as torch tensors.

Usage (what ``python -m clusiam_fast.train ... --loader dali`` calls)::

    from clusiam_fast.data.dali import build_dali_loader
    loader = build_dali_loader(paths, batch_size=256, crop_size=224, mean=mean, std=std,
                               device="gpu", seed=0, shard_id=rank, num_shards=world)
    for epoch in range(epochs):
        loader.set_epoch(epoch)          # optional; epochs count up by themselves
        for view1, view2 in loader:      # (N, 3, crop, crop) float, normalised, on the GPU
            ...

``source`` is a resolved DATA (:class:`~clusiam_fast.data.resolve.DataArg`) or what it
resolves: a list of image files, a folder of images, a tiler ``manifest.csv`` (or
CLAM ``.h5`` coordinate files) to read patches straight from the slides (decoded on the CPU
by Python workers, or on the GPU by cuCIM with ``decode_device="cuda"``), or webdataset
shards (a folder of ``.tar`` files, or a list of them) written by
:mod:`clusiam_fast.data.shards`. ``device="cpu"`` runs everything on DALI's CPU threads
(``device_id=None``); ``device="gpu"`` decodes JPEGs with nvJPEG (``mixed``) and augments
on the GPU; the views never visit the host (outputs reach torch through DLPack, without
a copy).

The augmentation is the trainer's recipe (:mod:`clusiam_fast.data.augment`), rebuilt
from DALI operators in :mod:`clusiam_fast.data.dali_augment` (read its docstring for
what matches torchvision exactly and what is approximated).

Determinism: each epoch's pipeline is built with a seed derived from ``(seed, epoch,
shard_id)`` and the epoch's order is a pure function of ``(seed, epoch)``, so an epoch
gives the same batches whenever it is run, with any ``num_threads`` (resuming at an
epoch boundary is exact). Ranks: each of ``num_shards`` ranks gets a disjoint share of
``n // num_shards`` samples per epoch, so all ranks run the same number of batches.

Bad images (files): a cheap check of each file's start and end leaves out empty,
truncated and non-image files, reported by name, before training (``validate``). A file
that still fails inside DALI stops that pipeline: the files of the batches in flight are
decoded one by one, the culprits reported and replaced by other images of the epoch
(epoch length unchanged on every rank), and the epoch goes on from the batch where it
stopped. ``loader.skipped`` lists ``(file, reason)``. Shards are checked when packed;
slide patches that cannot be read are reported and replaced by the worker that reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..slides import check_decode_device
from ..utils.deps import require
from .augment import PAPER_RECIPE, Recipe
from .dali_augment import augment_view, check_options
from .dali_checks import check_headers, find_undecodable, probe_decode
from .dali_sources import HW_DECODER_LOAD, FileSource, ShardSource, SlideSource, epoch_plan
from .resolve import as_data_arg

log = logging.getLogger("clusiam_fast.data.dali")

_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


def _two_view_graph(source, source_kwargs: dict, view_kwargs: dict):
    """Pipeline body: decoded images from ``source`` -> two independently augmented views."""
    images = source.graph(**source_kwargs)
    return augment_view(images, **view_kwargs), augment_view(images, **view_kwargs)


def _derive_seed(*values: int) -> int:
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1)[0] & 0x7FFFFFFF)


def dali_to_torch(batch, *, gpu: bool, device_id: int | None, dtype: torch.dtype, zero_copy: bool) -> torch.Tensor:
    """A DALI output batch as a torch tensor on the pipeline's device.

    With DALI's dynamic executor (the default) outputs are reference-counted buffers:
    DLPack hands them over without a copy, and on the GPU the exchange orders DALI's
    stream before torch's current one (as ``DALIGenericIterator`` does). Otherwise the
    batch is copied on torch's current stream.
    """
    dense = batch.as_tensor()
    if zero_copy:
        if gpu:
            with torch.cuda.device(device_id):
                return torch.from_dlpack(dense)
        return torch.from_dlpack(dense)
    from nvidia.dali.plugin.pytorch import feed_ndarray

    device = torch.device("cuda", device_id) if gpu else torch.device("cpu")
    out = torch.empty(dense.shape(), dtype=dtype, device=device)
    feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(device) if gpu else None)
    return out


class DaliTwoViewLoader:
    """Iterable of ``(view1, view2)`` batches; ``len()`` is the number of batches per epoch."""

    def __init__(
        self,
        source,
        *,
        batch_size: int,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str = "cpu",
        device_id: int | None = None,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        num_threads: int = 2,
        drop_last: bool = True,
        dtype: torch.dtype = torch.float32,
        recipe: Recipe = PAPER_RECIPE,
        hue_mode: str = "auto",
        blur: str = "pil",
        blur_window: int | None = None,
        prefetch: int = 2,
    ) -> None:
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")
        if batch_size < 1 or crop_size < 1:
            raise ValueError(f"batch_size and crop_size must be positive, got {batch_size}, {crop_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 values with std > 0, got {mean}, {std}")
        check_options(recipe, hue_mode, blur, blur_window)
        self.source = source
        self.batch_size, self.crop_size = int(batch_size), int(crop_size)
        self.device, self.seed = device, int(seed)
        self.shard_id, self.num_shards = int(shard_id), int(num_shards)
        self.num_threads, self.prefetch, self.drop_last = int(num_threads), int(prefetch), drop_last
        self.dtype = dtype
        self.gpu = device == "gpu"
        self.device_id = device_id
        if self.gpu:
            if not torch.cuda.is_available():
                raise RuntimeError(
                    "build_dali_loader(device='gpu') needs a CUDA GPU; none is visible. "
                    "Use device='cpu' (or --loader torch)."
                )
            self.device_id = torch.cuda.current_device() if device_id is None else int(device_id)
        if hue_mode == "auto":  # exact HSV hue where it is cheap (GPU), the linear rotation on the CPU
            hue_mode = "hsv" if self.gpu else "linear"
        self.hue_mode = hue_mode
        self.view_kwargs = dict(
            recipe=recipe,
            crop_size=self.crop_size,
            mean=list(mean),
            std=list(std),
            out_dtype=_DTYPES[dtype],
            hue_mode=hue_mode,
            blur=blur,
            blur_window=blur_window,
            gpu=self.gpu,
        )
        self.samples_per_epoch = len(source) // self.num_shards
        if self.samples_per_epoch == 0 or (drop_last and self.samples_per_epoch < self.batch_size):
            raise ValueError(
                f"{len(source)} images over {self.num_shards} rank(s) give {self.samples_per_epoch} per rank, "
                f"fewer than one batch of {self.batch_size}; lower the batch size or add data"
            )
        full, rest = divmod(self.samples_per_epoch, self.batch_size)
        self._len = full if (drop_last or rest == 0) else full + 1
        self._last_batch = self.batch_size if (drop_last or rest == 0) else rest
        self._epoch = 0
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self._epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        return self._run_epoch(epoch)

    # -- internals ---------------------------------------------------------------------------

    def _pipeline(self, epoch: int, start: int, order: np.ndarray | None):
        from nvidia.dali import pipeline_def

        source_kwargs = dict(
            order=order,
            batch_size=self.batch_size,
            start=start,
            gpu=self.gpu,
            epoch=epoch,
            seed=_derive_seed(self.seed, epoch, 1),
            shard_id=self.shard_id,
            num_shards=self.num_shards,
        )
        build = pipeline_def(_two_view_graph, enable_conditionals=True)
        pipe = build(
            self.source,
            source_kwargs,
            self.view_kwargs,
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id if self.gpu else None,
            seed=_derive_seed(self.seed, epoch, self.shard_id, start),
            prefetch_queue_depth=self.prefetch,
            **self.source.pipeline_kwargs(self.gpu),
        )
        pipe.build()
        return pipe

    def _to_torch(self, batch, zero_copy: bool) -> torch.Tensor:
        return dali_to_torch(batch, gpu=self.gpu, device_id=self.device_id, dtype=self.dtype, zero_copy=zero_copy)

    def _run_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        has_plan = hasattr(self.source, "order")
        plan = (
            epoch_plan(
                len(self.source), seed=self.seed, epoch=epoch, shard_id=self.shard_id, num_shards=self.num_shards
            )
            if has_plan
            else None
        )
        order = self.source.order(plan) if has_plan else None
        step, skipped_before = 0, len(self.skipped)
        while step < self._len:
            pipe = self._pipeline(epoch, step, order)
            zero_copy = bool(getattr(pipe, "exec_dynamic", False))
            try:
                while step < self._len:
                    out1, out2 = pipe.run()
                    view1, view2 = self._to_torch(out1, zero_copy), self._to_torch(out2, zero_copy)
                    if step == self._len - 1 and self._last_batch < self.batch_size:
                        view1, view2 = view1[: self._last_batch], view2[: self._last_batch]
                    step += 1
                    yield view1, view2
            except RuntimeError as error:
                del pipe
                if not self._recover(error, order, step):
                    raise
                order = self.source.order(plan)
        if len(self.skipped) > skipped_before:
            log.warning(
                "DALI loader: %d undecodable image(s) found in epoch %d, %d skipped in all (loader.skipped lists them)",
                len(self.skipped) - skipped_before,
                epoch,
                len(self.skipped),
            )

    def _recover(self, error: RuntimeError, order: np.ndarray | None, step: int) -> bool:
        """Find the files that broke the pipeline; record and report them. False: not a bad file."""
        if not isinstance(self.source, FileSource) or order is None:
            return False
        n, bs = len(order), self.batch_size
        window = range(step * bs, (step + self.prefetch + 2) * bs)  # batches possibly in flight
        suspects = sorted({int(order[i % n]) for i in window})
        bad = probe_decode([self.source.name(i) for i in suspects], gpu=self.gpu, device_id=self.device_id)
        if not bad:
            return False
        for index in suspects:
            name = self.source.name(index)
            if name in bad:
                self.source.bad[index] = bad[name]
                self.skipped.append((name, bad[name]))
                log.warning("skipping undecodable image %s: %s", name, bad[name])
        return True


def _open_source(
    source,
    *,
    workers: int,
    reader: str | None = None,
    decode_device: str = "cpu",
    device: str = "cpu",
    hw_decoder_load: float = HW_DECODER_LOAD,
):
    """The DALI source for DATA (a :class:`~.resolve.DataArg` as it is, else resolved here); ``reader``: slide
    reader (None: auto)."""
    arg = as_data_arg(source, what="DALI source")
    check_decode_device(decode_device)  # cuda: cuCIM installed and a GPU visible, else says which is missing
    if decode_device == "cuda" and arg.kind not in ("manifest", "coords"):
        raise ValueError(
            f"--decode-device cuda decodes slide patches with cuCIM; DATA {arg.path} is {arg.describe()} "
            "(the GPU pipeline decodes image files with nvJPEG anyway): use --decode-device cpu"
        )
    if decode_device == "cuda" and device != "gpu":
        raise ValueError("--decode-device cuda feeds the DALI GPU pipeline, which needs a CUDA device (--device cuda)")
    if not 0.0 <= hw_decoder_load <= 1.0:
        raise ValueError(f"hw_decoder_load must be in [0, 1], got {hw_decoder_load}")
    if arg.kind == "shards":
        return ShardSource(list(arg.files), hw_decoder_load)
    if arg.kind in ("manifest", "coords"):
        return SlideSource(arg, workers=workers, reader=reader, decode_device=decode_device)
    return FileSource(list(arg.files), hw_decoder_load)


def build_dali_loader(
    source,
    *,
    batch_size: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str = "cpu",
    seed: int = 0,
    shard_id: int = 0,
    num_shards: int = 1,
    num_threads: int = 2,
    drop_last: bool = True,
    dtype: torch.dtype = torch.float32,
    device_id: int | None = None,
    recipe: Recipe = PAPER_RECIPE,
    hue_mode: str = "auto",
    blur: str = "pil",
    blur_window: int | None = None,
    validate: str = "header",
    py_workers: int | None = None,
    prefetch: int = 2,
    reader: str | None = None,
    decode_device: str = "cpu",
    hw_decoder_load: float = HW_DECODER_LOAD,
) -> DaliTwoViewLoader:
    """A DALI loader of ``(view1, view2)`` normalised NCHW tensors; ``len()`` = batches per epoch.

    Args:
        source: DATA resolved (:class:`~clusiam_fast.data.resolve.DataArg`, taken as it is) or
            to resolve: image paths, a folder of images, a tiler ``manifest.csv`` / CLAM ``.h5`` files
            (patches read from the slides by ``py_workers`` processes), or webdataset shards
            (a folder of ``.tar`` + ``.idx`` files, or their paths).
        batch_size, crop_size: per-rank batch and output side in pixels.
        mean, std: per-channel statistics in [0, 1] units (``dataset_mean_std``).
        device: ``"cpu"`` (DALI CPU threads, ``device_id=None``) or ``"gpu"`` (nvJPEG + GPU ops;
            tensors come out on ``cuda:device_id``, default the current device).
        seed: fixes the order and every random draw of each epoch.
        shard_id, num_shards: this rank and the world size; ranks get disjoint, equal shares.
        num_threads: DALI CPU threads.
        drop_last: drop the last incomplete batch of the rank's share.
        dtype: ``torch.float32`` or ``torch.float16`` outputs.
        recipe: the trainer's :class:`~clusiam_fast.data.augment.Recipe` (the paper's by default).
        hue_mode: ``"hsv"`` (exact), ``"linear"`` (cheap) or ``"auto"`` (hsv on the GPU, linear
            on the CPU); see :mod:`.dali_augment`.
        blur: ``"pil"`` (PIL's box-approximated Gaussian, as the torchvision recipe) or
            ``"gaussian"`` (true Gaussian, window ``2 ceil(3 sigma) + 1`` capped at ``blur_window``).
        validate: for image files, ``"header"`` (default: cheap check of every file's start and
            end), ``"decode"`` (decode everything once with DALI first) or ``"none"``; files
            that fail are reported by name and left out. Files that still fail during
            training are found, reported and replaced then.
        py_workers: processes reading slide patches (default ``num_threads``).
        prefetch: batches DALI prepares ahead.
        reader: slide reader of manifest / h5 DATA (``cucim``, ``openslide``, ``tifffile``; None: each slide's own).
        decode_device: slides only: ``"cpu"`` (``py_workers`` processes decode) or ``"cuda"``
            (cuCIM decodes on the GPU, batches enter the GPU pipeline as device tensors; needs
            ``device="gpu"``, cuCIM and a GPU; see :class:`~.dali_sources.SlideSource`).
        hw_decoder_load: image files and shards on the GPU: share of JPEGs sent to the hardware
            JPEG decoder (default :data:`~.dali_sources.HW_DECODER_LOAD`, DALI's 0.65).
    """
    require("nvidia.dali", "nvidia-dali-cuda130", "the DALI data loader")
    if validate not in ("header", "decode", "none"):
        raise ValueError(f"validate must be 'header', 'decode' or 'none', got {validate!r}")
    src = _open_source(
        source,
        workers=py_workers or num_threads,
        reader=reader,
        decode_device=decode_device,
        device=device,
        hw_decoder_load=hw_decoder_load,
    )
    skipped: list[tuple[str, str]] = []
    if isinstance(src, FileSource) and validate != "none":
        bad = check_headers(src.paths, threads=max(4, 4 * num_threads))
        if validate == "decode":
            good = [p for p in src.paths if p not in bad]
            bad.update(find_undecodable(good, num_threads=num_threads))
        for path in src.paths:
            if path in bad:
                log.warning("skipping undecodable image %s: %s", path, bad[path])
                skipped.append((path, bad[path]))
        if bad:
            log.warning("DALI loader: %d of %d image(s) left out (%s check)", len(bad), len(src.paths), validate)
            kept = [p for p in src.paths if p not in bad]
            if not kept:
                raise ValueError(f"none of the {len(src.paths)} images can be decoded; first: {skipped[0]}")
            src = FileSource(kept, hw_decoder_load)
    loader = DaliTwoViewLoader(
        src,
        batch_size=batch_size,
        crop_size=crop_size,
        mean=mean,
        std=std,
        device=device,
        device_id=device_id,
        seed=seed,
        shard_id=shard_id,
        num_shards=num_shards,
        num_threads=num_threads,
        drop_last=drop_last,
        dtype=dtype,
        recipe=recipe,
        hue_mode=hue_mode,
        blur=blur,
        blur_window=blur_window,
        prefetch=prefetch,
    )
    loader.skipped.extend(skipped)
    return loader
