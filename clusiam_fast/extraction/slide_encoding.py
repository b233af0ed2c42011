"""Encoding slides into feature bags: what a worker of :func:`clusiam_fast.extraction.pipeline.extract` runs.

:class:`ExtractSpec` is everything a worker needs to rebuild the extraction (it is sent to
Ray actors and read tasks): the model (:func:`~clusiam_fast.extraction.encoders.load_encoder`)
and the patch transform (:func:`~clusiam_fast.extraction.normalisation.build_transform`). The local
engine encodes each slide in this process (:class:`_LocalEncoder`, a DataLoader per slide);
the Ray engine's :class:`SlideEncoder` actors (one model each) have the patches read by Ray
CPU tasks (:func:`read_patch_batch`). Whoever encodes a slide writes its bag
(:class:`_BagWriter`, atomically), then the cohort engine its done record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.resolve import DataArg
from ..formats.feature_bags import FeatureBag, safe_name, write_bag
from ..slides import OffSlideError
from .encoders import Encoder, load_encoder
from .normalisation import build_transform
from .sources import PatchSource, SlideEntry, collate_patches, open_source

OFF_SLIDE = f"{OffSlideError.__name__}:"  # how a failure of a patch off its slide starts (data.tolerant.describe_error)


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
        off_slide = sum(f["error"].startswith(OFF_SLIDE) for f in failures)
        if not parts:
            errors = {f["error"] for f in failures}
            same = f": {next(iter(errors))}" if len(errors) == 1 else ""  # e.g. the slide file cannot be opened
            if off_slide == len(failures) > 1:
                same = f" (every one lies outside the slide, e.g. {failures[0]['error']})"
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
            attrs={**slide.attrs, **self.attrs, "num_failed": len(failures), "num_off_slide": off_slide},
        )
        rel = Path("bags") / f"{name}.h5"
        write_bag(self.out / rel, bag)
        self.rows.append(
            {
                "slide_id": slide.slide_id,
                "bag_path": rel.as_posix(),
                "num_patches": len(bag),
                "num_failed": len(failures),
                "num_off_slide": off_slide,
                "failures": failures,
            }
        )


@dataclass(frozen=True)
class ExtractSpec:
    """Everything a worker (this process, or a Ray actor / read task) needs to rebuild the extraction."""

    checkpoint: str | None
    data: DataArg  # resolved once by the caller: workers open it as it is (its slide_dir included)
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
    encoder: str = "checkpoint"  # or timm:NAME / torchvision:NAME (extraction/encoders/baselines.py)
    weights: str | None = None
    random_init: bool = False
    encoder_kwargs: str | None = None  # JSON (the spec is hashable: read sources are cached by it)
    interpolation: str = "bilinear"
    trust_pickle: bool = False  # --trust-pickle: how the model file may be read, not what the bags hold
    reader: str | None = None  # --reader: which library decodes the slides (all place pixels alike), not what
    loader: str = "torch"  # torch (DataLoader + torchvision) or dali (extraction/dali_encoding.py): how, not what
    decode_device: str = "cpu"  # cpu or cuda (cuCIM GPU decode of slide patches): how, not what

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
            reader=self.reader,
            decode_device=self.decode_device,
        )
        if self.fit_size:
            source.fit(self.fit_size)
        return source

    def load_encoder(self) -> Encoder:
        kwargs = json.loads(self.encoder_kwargs) if self.encoder_kwargs else None
        return load_encoder(self.checkpoint, self.encoder, self.weights, self.random_init, kwargs, self.trust_pickle)

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
        self.dali = None
        if spec.loader == "dali":
            from .dali_encoding import DaliPatchPipeline

            self.dali = DaliPatchPipeline(spec, spec.decode_device, num_threads=max(1, spec.workers))


def _encode_slide_job(job, local: _LocalEncoder) -> tuple[bool, dict | str, list[str]]:
    """Cohort job of the local engine: read (DataLoader, or DALI), encode and write one slide's bag."""
    slide = local.source.slides[local.spec.slide_index(local.source, job.slide_id)]
    if local.dali is not None:
        from .dali_encoding import encode_slide_with_dali

        encode_slide_with_dali(local, local.dali, slide.start, slide.stop, local.source.patches)
        return local.finish(job)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(local.source.dataset, range(slide.start, slide.stop)),
        batch_size=local.spec.batch_size,
        shuffle=False,
        num_workers=0 if local.spec.decode_device == "cuda" else local.spec.workers,  # no CUDA in forked workers
        collate_fn=collate_patches,
        pin_memory=local.spec.device.startswith("cuda"),
    )
    for images, indices, failures in loader:
        local.bar.update(local.add(images, indices.numpy(), failures))
    return local.finish(job)


_READ_SOURCES: dict[str, PatchSource] = {}  # per Ray worker process: the source of each spec, opened once


def read_patch_batch(spec_ref: tuple, start: int, stop: int):
    """A Ray CPU task: patches ``start:stop`` of the source read and transformed -> (images, indices, failures).

    ``spec_ref``: ``(ray.put(spec),)``, nested so that Ray hands the reference over as it is: the spec,
    with its resolved DATA (every image path of a folder), is fetched once per worker process, not per task."""
    import ray

    from ..utils.threads import torch_threads

    key = spec_ref[0].hex()
    source = _READ_SOURCES.get(key)
    if source is None:
        source = _READ_SOURCES[key] = ray.get(spec_ref[0]).open_source()
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
        import ray

        torch.set_num_threads(1)
        super().__init__(spec, spec.load_encoder(), spec.open_source())
        self.spec_ref = (ray.put(spec),)  # what its read tasks get (see read_patch_batch)

    def run(self, job, settings: dict, since: float | None, lock_timeout: float):
        from ..cohort.engines import do_slide

        return do_slide(_actor_slide_job, job, self.spec.out, settings, since, lock_timeout, (self,))


def _actor_slide_job(job, actor: SlideEncoder) -> tuple[bool, dict | str, list[str]]:
    import ray

    slide = actor.source.slides[actor.spec.slide_index(actor.source, job.slide_id)]
    read = ray.remote(read_patch_batch).options(num_cpus=1)
    step = actor.spec.batch_size
    starts = list(range(slide.start, slide.stop, step))
    inflight = [read.remote(actor.spec_ref, a, min(a + step, slide.stop)) for a in starts[: actor.READ_AHEAD]]
    for k in range(len(starts)):
        images, indices, failures = ray.get(inflight.pop(0))
        following = k + actor.READ_AHEAD
        if following < len(starts):
            a = starts[following]
            inflight.append(read.remote(actor.spec_ref, a, min(a + step, slide.stop)))
        actor.add(images, indices, failures)
    return actor.finish(job)
