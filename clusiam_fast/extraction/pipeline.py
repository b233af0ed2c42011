"""Feature extraction: one CLAM-compatible feature bag per slide (the library behind ``clusiam_fast.extract``).

The output format and the order in which the normalisation statistics are looked up
are documented in :mod:`clusiam_fast.extract`; the bag schema is
:mod:`clusiam_fast.formats.feature_bags`.

Slides are the unit of work, run by a :class:`~clusiam_fast.cohort.CohortRun` as ``tile``
runs them (done records, locks, shards, cohort.json); what a worker does with one (read,
encode, write its bag) is :mod:`clusiam_fast.extraction.slide_encoding`: the local engine
encodes each slide in this process, the Ray engine hands slides to its ``SlideEncoder`` actors.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..cohort import CohortRun
from ..data.resolve import PATCH_KINDS, DataArg, as_data_arg
from ..formats.feature_bags import write_index
from ..utils.atomic import atomic_write_json
from .encoders import Encoder, load_encoder
from .normalisation import build_transform, check_normalisation, resolve_normalisation
from .slide_encoding import (
    ExtractSpec,
    SlideEncoder,
    _encode_slide_job,
    _LocalEncoder,
    _slide_jobs,
)
from .sources import PatchSource, open_source


def extract(
    checkpoint: str | Path | None,
    data: DataArg | str | Path,
    out: str | Path,
    *,
    batch_size: int = 128,
    workers: int = 2,
    fp16: bool = False,
    device: str = "auto",
    amp: bool = True,
    resize: int | None = None,
    crop: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    progress: bool = True,
    slide_dir: str | Path | None = None,
    reader: str | None = None,
    encoder: str = "checkpoint",
    weights: str | Path | None = None,
    random_init: bool = False,
    encoder_kwargs: dict | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    redo: bool = False,
    lock_timeout: float = 600.0,
    shard: tuple[int, int] | None = None,
    trust_pickle: bool = False,
    loader: str = "torch",
    decode_device: str = "cpu",
) -> dict:
    """Write one feature bag per slide of ``data`` into ``out``; return the summary (extract.json).

    ``data``: DATA (a path, resolved here once, after the model loaded, or a resolved
    :class:`~clusiam_fast.data.resolve.DataArg`, used as it is); ``slide_dir``, when given, sets its ``slide_dir``.

    Mixed patch sizes (without ``resize``/``crop``): every patch is resized to the
    checkpoint's training size (``crop_size`` of its config; the first patch's size for a
    plain state_dict) and the summary says so (``size_note``, ``patch_sizes``, ``fit_size``).
    Slides missing from a manifest are skipped and listed (``missing_slides``).

    ``encoder="timm:NAME"`` / ``"torchvision:NAME"`` (``checkpoint=None``) extracts with that
    model and local ``weights`` (:mod:`clusiam_fast.extraction.encoders.baselines`); its input size,
    interpolation and normalisation are used unless ``resize``/``crop``/``mean``/``std`` are given.

    Resumable (:mod:`clusiam_fast.cohort`): a slide whose bag has a done record for these
    inputs (slide and coordinate files, or the image folder) and settings is skipped
    (``skipped_slides``); ``redo`` forces; other settings are refused unless ``redo``;
    ``shard=(I, N)``; jobs sharing ``out`` lock slides. ``engine="ray"``: a pool of
    ``actors`` Ray actors (default: one per GPU with ``num_gpus=1`` each, else one CPU actor),
    each holding the model, fed patch batches read by Ray CPU tasks (see :class:`SlideEncoder`).
    ``index.csv`` lists every bag done in ``out``. A CHECKPOINT or ``weights`` file that needs pickle
    to load is refused unless ``trust_pickle`` (it could run code embedded in the file).

    ``loader="dali"``: slide patches go through a one-view DALI pipeline (resize, crop, normalise;
    :mod:`clusiam_fast.extraction.dali_encoding`) instead of a DataLoader and torchvision; features
    agree within fp tolerance. ``decode_device="cuda"``: cuCIM decodes slide patches on the GPU.
    """
    started = time.time()
    checkpoint, out = (None if checkpoint is None else Path(checkpoint)), Path(out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    _check_transform_flags(resize, crop, mean, std)
    _check_loader_flags(loader, decode_device)
    encoder_spec = encoder
    encoder = load_encoder(checkpoint, encoder_spec, weights, random_init, encoder_kwargs, trust_pickle)
    mean, std, norm_origin = resolve_normalisation(encoder.config, checkpoint, mean, std)
    check_normalisation(mean, std, norm_origin)
    if resize is None and crop is None:  # a baseline's own input size (timm: resize then centre crop)
        resize, crop = encoder.config.get("resize"), encoder.config.get("crop")
    interpolation = encoder.config.get("interpolation", "bilinear")
    transform = build_transform(mean, std, resize, crop, interpolation)
    data = as_data_arg(data, accept=PATCH_KINDS, slide_dir=slide_dir)  # once: the source and the workers take it
    source = open_source(data, transform, reader=reader, decode_device=decode_device)
    if loader == "dali":
        from .dali_encoding import check_dali_extract

        check_dali_extract(source.kind, engine, decode_device, device, interpolation)
    fit_size, size_note = _fit_sizes(source, encoder, resize, crop)
    spec = ExtractSpec(
        checkpoint=None if checkpoint is None else str(checkpoint.resolve()),
        data=data,
        mean=tuple(mean),
        std=tuple(std),
        resize=resize,
        crop=crop,
        fit_size=fit_size,
        device=device,
        amp=amp and device.startswith("cuda"),
        fp16=fp16,
        batch_size=batch_size,
        workers=workers,
        out=str(out),
        encoder=encoder_spec,
        weights=None if weights is None else str(Path(weights).resolve()),
        random_init=random_init,
        encoder_kwargs=json.dumps(encoder_kwargs, sort_keys=True) if encoder_kwargs else None,
        interpolation=interpolation,
        trust_pickle=trust_pickle,
        reader=reader,
        loader=loader,
        decode_device=decode_device,
    )
    cohort = CohortRun(
        out,
        "extract",
        _slide_jobs(source),
        spec.settings(),
        redo=redo,
        shard=shard,
        engine=engine,
        lock_timeout=lock_timeout,
        temp_folders=("bags",),
        started=started,
    )
    seconds = _encode_slides(cohort, spec, encoder, source, progress, actors, ray_address)
    cohort.finish(lambda records: _rewrite_index(out, records))
    rows = [r.value for r in cohort.done]
    summary = {
        "checkpoint": spec.checkpoint,
        "data": str(data.path.resolve()),
        "source": source.kind,
        **_encoder_summary(encoder),
        "feature_dim": max([int(r.get("feature_dim", 0)) for r in rows] or [0]),
        "num_clusters": max([int(r.get("num_clusters", 0)) for r in rows] or [0]),
        "dtype": np.dtype(spec.dtype).name,
        "device": device,
        "loader": loader,
        "decode_device": decode_device,
        "amp": spec.amp,
        "resize": resize,
        "crop": crop,
        "mean": list(mean),
        "std": list(std),
        "normalisation_from": norm_origin,
        "patch_sizes": {f"{w}x{h}": v for (w, h), v in sorted(source.sizes.items())},
        "fit_size": fit_size,
        "size_note": size_note,
        "missing_slides": source.missing_slides,
        **_slides_summary(cohort, seconds),
    }
    atomic_write_json(out / "extract.json", summary)
    return summary


def _rewrite_index(out: Path, records: dict[str, dict]) -> Path:
    """``index.csv``: every bag done in ``out`` (the done records whose bags match them)."""
    return write_index(out, [r["result"] for _, r in sorted(records.items()) if isinstance(r.get("result"), dict)])


def _check_loader_flags(loader: str, decode_device: str) -> None:
    """--loader and --decode-device (cuda: cuCIM installed and a GPU visible), before the model is loaded."""
    from ..slides import check_decode_device

    if loader not in ("torch", "dali"):
        raise ValueError(f"--loader must be torch or dali, got {loader!r}")
    if loader == "dali":
        from ..utils.deps import require

        require("nvidia.dali", "nvidia-dali-cuda130", "extract --loader dali")
    check_decode_device(decode_device)


def _check_transform_flags(resize, crop, mean, std) -> None:
    """The --resize, --crop, --mean and --std given (before the model is loaded)."""
    for flag, value in (("--resize", resize), ("--crop", crop)):
        if value is not None and not (isinstance(value, int) and value > 0):
            raise ValueError(f"{flag} must be a positive number of pixels, got {value}")
    if (mean is None) != (std is None):
        raise ValueError("give both --mean and --std, or neither")
    if mean is not None:
        check_normalisation(mean, std, "the command line (--mean/--std)")


def _encode_slides(
    cohort: CohortRun, spec: ExtractSpec, encoder: Encoder, source: PatchSource, progress: bool, actors, ray_address
) -> float:
    """Encode the slides to do (this process, or Ray actors), a progress bar over their patches; the seconds."""
    from tqdm.auto import tqdm

    sizes = {s.slide_id: s.stop - s.start for s in source.slides}
    start = time.perf_counter()
    with tqdm(
        total=sum(sizes[j.slide_id] for j in cohort.todo), desc="extract", unit="patch", disable=not progress
    ) as bar:
        if cohort.engine == "ray":
            results = cohort.run_actors(
                SlideEncoder,
                (spec,),
                actors=actors,
                gpus_per_actor=1.0 if spec.device.startswith("cuda") else 0.0,
                ray_address=ray_address,
                num_cpus=(actors or 1) + max(1, spec.workers),
            )
        else:
            results = cohort.run(_encode_slide_job, (_LocalEncoder(spec, encoder, source, bar),))
        for result in results:
            if result.status == "done" and cohort.engine == "ray":
                bar.update(result.value["num_patches"] + result.value["num_failed"])
            bar.set_postfix(slides=len(cohort.done), failed=len(cohort.failed))
    return time.perf_counter() - start


def _encoder_summary(encoder: Encoder) -> dict:
    config = encoder.config
    return {
        "encoder": encoder.kind,
        "weights": config.get("weights"),
        "weights_sha256": config.get("weights_sha256"),
        "random_init": bool(config.get("random_init", False)),
        "dropped_keys": config.get("dropped_keys", []),
        "interpolation": config.get("interpolation", "bilinear"),
        "method": config.get("method", ""),
        "arch": config.get("arch", ""),
    }


def _slides_summary(cohort: CohortRun, seconds: float) -> dict:
    """The slides and patches of this run (extract.json)."""
    rows = [r.value for r in cohort.done]
    done = sum(r["num_patches"] + r["num_failed"] for r in rows)
    return {
        "num_slides": len(rows),
        "num_patches": int(sum(r["num_patches"] for r in rows)),
        "num_failed_patches": int(sum(r["num_failed"] for r in rows)),
        "failed_patches": {r["slide_id"]: r["failures"] for r in rows if r.get("failures")},
        "num_off_slide_patches": int(sum(r.get("num_off_slide", 0) for r in rows)),
        "off_slide_patches": {r["slide_id"]: r["num_off_slide"] for r in rows if r.get("num_off_slide")},
        "failed_slides": [{"slide_id": r.job.slide_id, "reason": str(r.value)} for r in cohort.failed],
        "skipped_slides": len(cohort.plan.skipped),
        "left_to_other_jobs": [r.job.slide_id for r in cohort.elsewhere],
        "engine": cohort.engine,
        "seconds": seconds,
        "patches_per_second": done / max(seconds, 1e-9),
    }


def _fit_sizes(source: PatchSource, encoder: Encoder, resize: int | None, crop: int | None) -> tuple[int | None, str]:
    """Give mixed-size patches one size (see :func:`extract`); returns (size or None, what was done)."""
    if len(source.sizes) <= 1:
        return None, ""
    if resize or crop:
        return None, f"patches come in {len(source.sizes)} sizes ({source.describe_sizes()}); --resize/--crop given"
    trained = encoder.config.get("crop_size")
    if trained:
        size, why = int(trained), "the checkpoint's training crop_size"
    else:
        w, h = next(iter(source.sizes))  # sizes are listed in patch order: the first is the first patch's
        size, why = max(w, h), "the size of the first patch; the checkpoint does not record its training size"
    source.fit(size)
    note = (
        f"patches come in {len(source.sizes)} sizes ({source.describe_sizes()}); every patch was resized to "
        f"{size}x{size} px ({why}); pass --resize N [--crop N] to choose another size"
    )
    warnings.warn(note, stacklevel=3)
    return size, note
