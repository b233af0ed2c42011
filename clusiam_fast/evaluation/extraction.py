"""Feature extraction: one CLAM-compatible feature bag per slide (the library behind ``clusiam_fast.extract``).

The output format and the order in which the normalisation statistics are looked up
are documented in :mod:`clusiam_fast.extract`; the bag schema is
:mod:`clusiam_fast.formats.feature_bags`.

Slides are the unit of work (:mod:`clusiam_fast.cohort`: done records, locks, shards,
cohort.json): the local engine reads each slide with a DataLoader and encodes it in this
process; the Ray engine hands slides to :class:`SlideEncoder` actors (one model each) that
have the patches read by Ray CPU tasks (:func:`read_patch_batch`) and write their bags.
Whoever encodes a slide writes its bag (atomically) and then its done record.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..formats.feature_bags import FeatureBag, safe_name, write_bag, write_index
from ..utils.atomic import atomic_write_json, remove_stale_temps
from .encoder import Encoder, load_encoder
from .sources import PatchSource, SlideEntry, collate_patches, open_source

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_normalisation(
    encoder: Encoder, checkpoint: Path | None, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float], str]:
    """(mean, std, where they came from); see the module docstring for the order.

    timm/torchvision encoders carry their own (``norm_origin`` says whose)."""
    if mean is not None and std is not None:
        return list(mean), list(std), "command line"
    cfg = encoder.config
    for m_key, s_key in (("mean", "std"), ("norm_mean", "norm_std")):
        if cfg.get(m_key) is not None and cfg.get(s_key) is not None:
            return (
                [float(v) for v in cfg[m_key]],
                [float(v) for v in cfg[s_key]],
                cfg.get("norm_origin") or f"checkpoint config ({m_key}/{s_key})",
            )
    stats = cfg.get("norm_stats")
    if isinstance(stats, dict) and "mean" in stats and "std" in stats:
        return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]], "checkpoint config (norm_stats)"
    for folder in (checkpoint.parent, checkpoint.parent.parent) if checkpoint is not None else ():
        path = folder / "norm_stats.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return [float(v) for v in data["mean"]], [float(v) for v in data["std"]], str(path)
    warnings.warn(
        f"no normalisation statistics found for {checkpoint} (no --mean/--std, none in its config, no norm_stats.json beside it); using ImageNet's",
        stacklevel=2,
    )
    return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (fallback)"


def check_normalisation(mean: Sequence[float], std: Sequence[float], origin: str) -> None:
    """Refuse statistics that cannot be right for [0, 1] pixels, saying what is wrong (and where they came from)."""
    for name, values in (("mean", mean), ("std", std)):
        values = list(values)
        if len(values) != 3:
            raise ValueError(f"normalisation {name} from {origin} needs 3 values (R G B), got {len(values)}: {values}")
        bad = [v for v in values if not isinstance(v, (int, float)) or not math.isfinite(float(v))]
        if bad:
            raise ValueError(f"normalisation {name} from {origin} has non-finite values: {values}")
        if any(float(v) > 1 for v in values):
            raise ValueError(
                f"normalisation {name} from {origin} is {values}: values > 1 suggest 0-255 pixel units; "
                f"give them for pixels in [0, 1] (divided by 255: {[round(float(v) / 255, 4) for v in values]})"
            )
    if any(float(v) <= 0 for v in std):
        raise ValueError(f"normalisation std from {origin} is {list(std)}: every std must be > 0")
    if any(float(v) < 0 for v in mean):
        raise ValueError(f"normalisation mean from {origin} is {list(mean)}: a mean of [0, 1] pixels lies in [0, 1]")


def build_transform(
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
    crop: int | None = None,
    interpolation: str = "bilinear",
):
    """PIL RGB -> normalised tensor: optional resize (shorter side), optional centre crop."""
    from torchvision import transforms as T

    steps = []
    if resize:
        steps.append(T.Resize(resize, interpolation=T.InterpolationMode(interpolation)))
    if crop:
        steps.append(T.CenterCrop(crop))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class _BagWriter:
    """Collects per-patch outputs of a slide and writes its bag (:meth:`write_slide`) once it is complete."""

    def __init__(self, source: PatchSource, out: Path, attrs: dict, dtype: np.dtype) -> None:
        self.source, self.out, self.attrs, self.dtype = source, out, attrs, dtype
        self.starts = np.array([s.start for s in source.slides])
        self.parts: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}
        self.failed: dict[int, list[dict]] = {}
        self.rows: list[dict] = []
        self.failed_slides: list[dict] = []
        self.used_names: set[str] = set()

    def slide_of(self, index: int) -> int:
        return int(np.searchsorted(self.starts, index, side="right") - 1)

    def add(
        self, indices: np.ndarray, features: np.ndarray, probs: np.ndarray | None, failures: list[tuple[int, str]]
    ) -> None:
        for i, error in failures:
            self.failed.setdefault(self.slide_of(i), []).append({"patch": self.source.item_name(i), "error": error})
        if len(indices):
            owner = np.searchsorted(self.starts, indices, side="right") - 1
            for s in np.unique(owner):
                sel = owner == s
                self.parts.setdefault(int(s), []).append(
                    (indices[sel], features[sel], None if probs is None else probs[sel])
                )

    def write_slide(self, k: int) -> tuple[bool, dict | str]:
        """Write slide ``k``'s bag now (cohort engines: one slide at a time); (True, index row) or (False, reason)."""
        rows, failed = len(self.rows), len(self.failed_slides)
        self._write(k, self.source.slides[k])
        if len(self.rows) > rows:
            return True, self.rows[-1]
        return False, self.failed_slides[failed]["reason"] if len(self.failed_slides) > failed else "no bag written"

    def _write(self, k: int, slide: SlideEntry) -> None:
        parts = self.parts.pop(k, [])
        failures = self.failed.pop(k, [])
        if not parts:
            errors = {f["error"] for f in failures}
            same = f": {next(iter(errors))}" if len(errors) == 1 else ""  # e.g. the slide file cannot be opened
            self.failed_slides.append(
                {
                    "slide_id": slide.slide_id,
                    "reason": f"all {slide.stop - slide.start} patches failed{same}",
                    "num_failed": len(failures),
                    "failures": failures[:20],
                }
            )
            return
        idx = np.concatenate([p[0] for p in parts]) - slide.start
        feats = np.concatenate([p[1] for p in parts]).astype(self.dtype)
        probs = np.concatenate([p[2] for p in parts]) if parts[0][2] is not None else None
        name = safe_name(slide.slide_id)
        while name in self.used_names:
            name += "_"
        self.used_names.add(name)
        bag = FeatureBag(
            slide_id=slide.slide_id,
            features=feats,
            probs=None if probs is None else probs.astype(self.dtype),
            clusters=None if probs is None else probs.argmax(1).astype(np.int32),
            coords=None if slide.coords is None else slide.coords[idx],
            paths=None if slide.paths is None else [slide.paths[i] for i in idx],
            attrs={**slide.attrs, **self.attrs, "num_failed": len(failures)},
        )
        rel = Path("bags") / f"{name}.h5"
        write_bag(self.out / rel, bag)
        self.rows.append(
            {
                "slide_id": slide.slide_id,
                "bag_path": rel.as_posix(),
                "num_patches": len(bag),
                "num_failed": len(failures),
                "failures": failures,
            }
        )


def load_any_encoder(
    checkpoint: str | Path | None,
    encoder: str = "checkpoint",
    weights: str | Path | None = None,
    random_init: bool = False,
    encoder_kwargs: dict | None = None,
) -> Encoder:
    """The trainer checkpoint / exported backbone, or a ``timm:NAME`` / ``torchvision:NAME`` baseline."""
    from .baselines import load_baseline_encoder, parse_encoder

    if parse_encoder(encoder)[0] == "checkpoint":
        if checkpoint is None:
            raise ValueError("give a CHECKPOINT, or --encoder timm:NAME / torchvision:NAME with --weights FILE")
        if weights is not None or random_init or encoder_kwargs:
            raise ValueError("--weights, --random-init and --encoder-kwargs go with --encoder timm:/torchvision:")
        return load_encoder(checkpoint)
    if checkpoint is not None:
        raise ValueError(f"--encoder {encoder} takes no CHECKPOINT (its weights come from --weights)")
    return load_baseline_encoder(encoder, weights, random_init=random_init, model_kwargs=encoder_kwargs)


def extract(
    checkpoint: str | Path | None,
    data: str | Path,
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
) -> dict:
    """Write one feature bag per slide of ``data`` into ``out``; return the summary (extract.json).

    Mixed patch sizes (without ``resize``/``crop``): every patch is resized to the
    checkpoint's training size (``crop_size`` of its config; the first patch's size for a
    plain state_dict) and the summary says so (``size_note``, ``patch_sizes``, ``fit_size``).
    Slides missing from a manifest are skipped and listed (``missing_slides``).

    ``encoder="timm:NAME"`` / ``"torchvision:NAME"`` (``checkpoint=None``) extracts with that
    model and local ``weights`` (:mod:`clusiam_fast.evaluation.baselines`); its input size,
    interpolation and normalisation are used unless ``resize``/``crop``/``mean``/``std`` are given.

    Resumable (:mod:`clusiam_fast.cohort`): a slide whose bag has a done record for these
    inputs (slide and coordinate files, or the image folder) and settings is skipped
    (``skipped_slides``); ``redo`` forces; other settings are refused unless ``redo``;
    ``shard=(I, N)``; jobs sharing ``out`` lock slides. ``engine="ray"``: a pool of
    ``actors`` Ray actors (default: one per GPU with ``num_gpus=1`` each, else one CPU actor),
    each holding the model, fed patch batches read by Ray CPU tasks (see :class:`SlideEncoder`).
    ``index.csv`` lists every bag done in ``out``.
    """
    from ..cohort import CohortSummary, done_records, plan_cohort, run_cohort, select_shard
    from ..cohort.engines import run_actor_cohort

    started = time.time()
    checkpoint, out = (None if checkpoint is None else Path(checkpoint)), Path(out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if (mean is None) != (std is None):
        raise ValueError("give both --mean and --std, or neither")
    if mean is not None:
        check_normalisation(mean, std, "the command line (--mean/--std)")
    encoder_spec = encoder
    encoder = load_any_encoder(checkpoint, encoder_spec, weights, random_init, encoder_kwargs)
    mean, std, norm_origin = resolve_normalisation(encoder, checkpoint, mean, std)
    check_normalisation(mean, std, norm_origin)
    if resize is None and crop is None:  # a baseline's own input size (timm: resize then centre crop)
        resize, crop = encoder.config.get("resize"), encoder.config.get("crop")
    interpolation = encoder.config.get("interpolation", "bilinear")
    transform = build_transform(mean, std, resize, crop, interpolation)
    source = open_source(data, transform, slide_dir=slide_dir)
    fit_size, size_note = _fit_sizes(source, encoder, resize, crop)
    spec = ExtractSpec(
        checkpoint=None if checkpoint is None else str(checkpoint.resolve()),
        data=str(data),
        slide_dir=None if slide_dir is None else str(slide_dir),
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
    )
    for folder in ("bags", "done", "failed"):  # of writes killed mid-way (dead pid, > 60 s)
        remove_stale_temps(out / folder)
    jobs = select_shard(_slide_jobs(source), [s.slide_id for s in source.slides], shard)
    settings = spec.settings()
    plan = plan_cohort(jobs, out, settings, redo)
    summary_file = CohortSummary(out, "extract", [j.slide_id for j in jobs])
    summary_file.skipped, summary_file.engine = len(plan.skipped), engine
    summary_file.write()

    from tqdm.auto import tqdm

    rows, failed_slides, others = [], [], []
    sizes = {s.slide_id: s.stop - s.start for s in source.slides}
    total = sum(sizes[j.slide_id] for j in plan.todo)
    start = time.perf_counter()
    with tqdm(total=total, desc="extract", unit="patch", disable=not progress) as bar:
        if engine == "ray":
            results = run_actor_cohort(
                plan.todo,
                SlideEncoder,
                (spec,),
                out,
                settings,
                actors=actors,
                gpus_per_actor=1.0 if device.startswith("cuda") else 0.0,
                ray_address=ray_address,
                num_cpus=(actors or 1) + max(1, workers),
                redo=redo,
                since=started,
                lock_timeout=lock_timeout,
            )
        else:
            local = _LocalEncoder(spec, encoder, source, bar)
            results = run_cohort(
                plan.todo,
                _encode_slide_job,
                out,
                settings,
                args=(local,),
                redo=redo,
                since=started,
                lock_timeout=lock_timeout,
            )
        for result in results:
            if result.status == "done":
                rows.append(result.value)
                if engine == "ray":
                    bar.update(result.value["num_patches"] + result.value["num_failed"])
            elif result.status == "failed":
                failed_slides.append({"slide_id": result.job.slide_id, "reason": str(result.value)})
            else:
                others.append(result.job.slide_id)
            summary_file.write()
            bar.set_postfix(slides=len(rows), failed=len(failed_slides))
    seconds = time.perf_counter() - start
    recorded = done_records(out)
    write_index(out, [r["result"] for _, r in sorted(recorded.items()) if isinstance(r.get("result"), dict)])
    summary_file.write()
    feature_dim = max([int(r.get("feature_dim", 0)) for r in rows] or [0])
    num_clusters = max([int(r.get("num_clusters", 0)) for r in rows] or [0])
    done = sum(r["num_patches"] + r["num_failed"] for r in rows)
    summary = {
        "checkpoint": spec.checkpoint,
        "data": str(Path(data).resolve()),
        "source": source.kind,
        "encoder": encoder.kind,
        "weights": encoder.config.get("weights"),
        "weights_sha256": encoder.config.get("weights_sha256"),
        "random_init": bool(encoder.config.get("random_init", False)),
        "dropped_keys": encoder.config.get("dropped_keys", []),
        "interpolation": interpolation,
        "method": encoder.config.get("method", ""),
        "arch": encoder.config.get("arch", ""),
        "feature_dim": feature_dim,
        "num_clusters": num_clusters,
        "dtype": np.dtype(spec.dtype).name,
        "device": device,
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
        "num_slides": len(rows),
        "num_patches": int(sum(r["num_patches"] for r in rows)),
        "num_failed_patches": int(sum(r["num_failed"] for r in rows)),
        "failed_patches": {r["slide_id"]: r["failures"] for r in rows if r.get("failures")},
        "failed_slides": failed_slides,
        "skipped_slides": len(plan.skipped),
        "left_to_other_jobs": others,
        "engine": engine,
        "seconds": seconds,
        "patches_per_second": done / max(seconds, 1e-9),
    }
    atomic_write_json(out / "extract.json", summary)
    return summary


@dataclass(frozen=True)
class ExtractSpec:
    """Everything a worker (this process, or a Ray actor / read task) needs to rebuild the extraction."""

    checkpoint: str | None
    data: str
    slide_dir: str | None
    mean: tuple
    std: tuple
    resize: int | None
    crop: int | None
    fit_size: int | None
    device: str
    amp: bool
    fp16: bool
    batch_size: int
    workers: int
    out: str
    encoder: str = "checkpoint"  # or timm:NAME / torchvision:NAME (evaluation/baselines.py)
    weights: str | None = None
    random_init: bool = False
    encoder_kwargs: str | None = None  # JSON (the spec is hashable: read sources are cached by it)
    interpolation: str = "bilinear"

    @property
    def dtype(self):
        return np.float16 if self.fp16 else np.float32

    def settings(self) -> dict:
        """What decides the bags (recorded with each, compared on re-runs): the model's files and the transform."""
        model_file = self.checkpoint or self.weights
        st = os.stat(model_file) if model_file else None
        return {
            "checkpoint": self.checkpoint,
            "encoder": self.encoder,
            "weights": self.weights,
            "random_init": self.random_init,
            "encoder_kwargs": self.encoder_kwargs,
            "checkpoint_size": st.st_size if st else None,
            "checkpoint_mtime_ns": st.st_mtime_ns if st else None,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "crop": self.crop,
            "fit_size": self.fit_size,
            "fp16": self.fp16,
        }

    def open_source(self) -> PatchSource:
        source = open_source(
            self.data,
            build_transform(self.mean, self.std, self.resize, self.crop, self.interpolation),
            slide_dir=self.slide_dir,
        )
        if self.fit_size:
            source.fit(self.fit_size)
        return source

    def load_encoder(self) -> Encoder:
        kwargs = json.loads(self.encoder_kwargs) if self.encoder_kwargs else None
        return load_any_encoder(self.checkpoint, self.encoder, self.weights, self.random_init, kwargs)

    def attrs(self, encoder: Encoder) -> dict:
        return {
            "method": encoder.config.get("method", ""),
            "arch": encoder.config.get("arch", ""),
            "checkpoint": self.checkpoint or "",
            "encoder": encoder.kind,
            "weights": encoder.config.get("weights") or "",
            "weights_sha256": encoder.config.get("weights_sha256", ""),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize or 0,
            "crop": self.crop or 0,
            "dtype": np.dtype(self.dtype).name,
        }

    @staticmethod
    def slide_index(source: PatchSource, slide_id: str) -> int:
        return next(k for k, s in enumerate(source.slides) if s.slide_id == slide_id)


def _slide_jobs(source: PatchSource):
    """One cohort job per slide: its inputs are the slide and coordinate files (manifest) or its image folder."""
    from ..cohort import SlideJob

    jobs = []
    for slide in source.slides:
        if source.kind == "manifest":
            path = str(slide.attrs.get("slide_path", slide.slide_id))
            inputs = tuple(str(p) for p in (path, slide.attrs.get("h5_path")) if p)
        else:
            folder = source.root / slide.slide_id
            path = str(folder if folder.is_dir() else source.root)
            inputs = (path,)
        jobs.append(SlideJob(slide.slide_id, path, inputs))
    return jobs


def _encode(encoder, images: torch.Tensor, device: str, use_amp: bool) -> tuple[np.ndarray, np.ndarray | None]:
    images = images.to(device, non_blocking=True)
    if device.startswith("cuda"):
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        f, p = encoder(images)
    return f.float().cpu().numpy(), None if p is None else p.float().cpu().numpy()


class _SlideEncoding:
    """An encoder, a patch source and a bag writer: encodes batches of one slide and writes its bag."""

    def __init__(self, spec: ExtractSpec, encoder: Encoder, source: PatchSource) -> None:
        self.spec, self.source = spec, source
        self.encoder = encoder.to(spec.device)
        if spec.device.startswith("cuda"):
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.writer = _BagWriter(source, Path(spec.out), spec.attrs(encoder), spec.dtype)

    def add(self, images, indices, failures) -> int:
        feats = probs = None
        if images is not None:
            feats, probs = _encode(self.encoder, torch.as_tensor(images), self.spec.device, self.spec.amp)
            self.writer.attrs.update(feature_dim=feats.shape[1], num_clusters=0 if probs is None else probs.shape[1])
        self.writer.add(np.asarray(indices), feats if feats is not None else np.zeros((0, 0)), probs, failures)
        return len(indices) + len(failures)

    def finish(self, job) -> tuple[bool, dict | str, list[str]]:
        ok, value = self.writer.write_slide(self.spec.slide_index(self.source, job.slide_id))
        if not ok:
            return False, value, []
        row = {k: v for k, v in value.items() if k != "failures"}
        row["failures"] = value["failures"][:20]
        row.update(
            feature_dim=self.writer.attrs.get("feature_dim", 0), num_clusters=self.writer.attrs.get("num_clusters", 0)
        )
        return True, row, [row["bag_path"]]


class _LocalEncoder(_SlideEncoding):
    """The local engine: a DataLoader (``workers`` processes) over each slide's patches, in this process."""

    def __init__(self, spec: ExtractSpec, encoder: Encoder, source: PatchSource, bar) -> None:
        super().__init__(spec, encoder, source)
        self.bar = bar


def _encode_slide_job(job, local: _LocalEncoder) -> tuple[bool, dict | str, list[str]]:
    """Cohort job of the local engine: read (DataLoader), encode and write one slide's bag."""
    slide = local.source.slides[local.spec.slide_index(local.source, job.slide_id)]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(local.source.dataset, range(slide.start, slide.stop)),
        batch_size=local.spec.batch_size,
        shuffle=False,
        num_workers=local.spec.workers,
        collate_fn=collate_patches,
        pin_memory=local.spec.device.startswith("cuda"),
    )
    for images, indices, failures in loader:
        local.bar.update(local.add(images, indices.numpy(), failures))
    return local.finish(job)


_READ_SOURCES: dict[ExtractSpec, PatchSource] = {}  # per Ray worker process: the source of each spec, opened once


def read_patch_batch(spec: ExtractSpec, start: int, stop: int):
    """A Ray CPU task: patches ``start:stop`` of the source read and transformed -> (images, indices, failures)."""
    from ..utils.threads import torch_threads

    source = _READ_SOURCES.get(spec)
    if source is None:
        source = _READ_SOURCES[spec] = spec.open_source()
    with torch_threads(1):
        images, indices, failures = collate_patches(source.dataset.__getitems__(list(range(start, stop))))
    return None if images is None else images.numpy(), indices.numpy(), failures


class SlideEncoder(_SlideEncoding):
    """A Ray actor holding one model: for each slide it is given, under the slide's lock, it has its
    patches read by Ray CPU tasks (:func:`read_patch_batch`, a few batches ahead), encodes them and
    writes the bag itself, atomically, then the done record.

    Ray Data was not used: a bag is one slide's patches in order, written once by whoever
    encoded them, under the slide's lock and with its done record; Ray Data's streaming
    batches mix slides and would need a group-by (and its extra dependencies) to rebuild them.
    """

    READ_AHEAD = 4

    def __init__(self, spec: ExtractSpec) -> None:
        torch.set_num_threads(1)
        super().__init__(spec, spec.load_encoder(), spec.open_source())

    def run(self, job, settings: dict, since: float | None, lock_timeout: float):
        from ..cohort.engines import do_slide

        return do_slide(_actor_slide_job, job, self.spec.out, settings, since, lock_timeout, (self,))


def _actor_slide_job(job, actor: SlideEncoder) -> tuple[bool, dict | str, list[str]]:
    import ray

    slide = actor.source.slides[actor.spec.slide_index(actor.source, job.slide_id)]
    read = ray.remote(read_patch_batch).options(num_cpus=1)
    step = actor.spec.batch_size
    starts = list(range(slide.start, slide.stop, step))
    inflight = [read.remote(actor.spec, a, min(a + step, slide.stop)) for a in starts[: actor.READ_AHEAD]]
    for k in range(len(starts)):
        images, indices, failures = ray.get(inflight.pop(0))
        following = k + actor.READ_AHEAD
        if following < len(starts):
            a = starts[following]
            inflight.append(read.remote(actor.spec, a, min(a + step, slide.stop)))
        actor.add(images, indices, failures)
    return actor.finish(job)


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
