"""Feature extraction: one CLAM-compatible feature bag per slide (the library behind ``clusiam_fast.extract``).

The output format and the order in which the normalisation statistics are looked up
are documented in :mod:`clusiam_fast.extract`; the bag schema is
:mod:`clusiam_fast.formats.feature_bags`.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..formats.feature_bags import FeatureBag, safe_name, write_bag, write_index
from ..utils.atomic import atomic_write_json
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
    """Collects per-patch outputs in dataset order and writes a slide's bag once it is complete."""

    def __init__(self, source: PatchSource, out: Path, attrs: dict, dtype: np.dtype) -> None:
        self.source, self.out, self.attrs, self.dtype = source, out, attrs, dtype
        self.starts = np.array([s.start for s in source.slides])
        self.parts: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = {}
        self.failed: dict[int, list[dict]] = {}
        self.next_slide = 0
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

    def flush_until(self, done: int) -> None:
        """Write every slide whose patches all have index < ``done``."""
        while self.next_slide < len(self.source.slides) and self.source.slides[self.next_slide].stop <= done:
            self._write(self.next_slide, self.source.slides[self.next_slide])
            self.next_slide += 1

    def num_failed_patches(self) -> int:
        return sum(len(v) for v in self.failed.values()) + sum(r["num_failed"] for r in self.rows)

    def totals(self) -> dict:
        """The counts and failures of the summary (extract.json)."""
        return {
            "num_slides": len(self.rows),
            "num_patches": int(sum(r["num_patches"] for r in self.rows)),
            "num_failed_patches": int(
                sum(r["num_failed"] for r in self.rows) + sum(f["num_failed"] for f in self.failed_slides)
            ),
            "failed_patches": {r["slide_id"]: r["failures"] for r in self.rows if r["failures"]},
            "failed_slides": self.failed_slides,
        }

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
) -> dict:
    """Write one feature bag per slide of ``data`` into ``out``; return the summary (extract.json).

    Mixed patch sizes (without ``resize``/``crop``): every patch is resized to the
    checkpoint's training size (``crop_size`` of its config; the first patch's size for a
    plain state_dict) and the summary says so (``size_note``, ``patch_sizes``, ``fit_size``).
    Slides missing from a manifest are skipped and listed (``missing_slides``).

    ``encoder="timm:NAME"`` / ``"torchvision:NAME"`` (``checkpoint=None``) extracts with that
    model and local ``weights`` (:mod:`clusiam_fast.evaluation.baselines`); its input size,
    interpolation and normalisation are used unless ``resize``/``crop``/``mean``/``std`` are given.
    """
    checkpoint, out = (None if checkpoint is None else Path(checkpoint)), Path(out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if (mean is None) != (std is None):
        raise ValueError("give both --mean and --std, or neither")
    if mean is not None:
        check_normalisation(mean, std, "the command line (--mean/--std)")
    spec = encoder
    encoder = load_any_encoder(checkpoint, spec, weights, random_init, encoder_kwargs).to(device)
    if device.startswith("cuda"):
        encoder = encoder.to(memory_format=torch.channels_last)
    mean, std, norm_origin = resolve_normalisation(encoder, checkpoint, mean, std)
    check_normalisation(mean, std, norm_origin)
    if resize is None and crop is None:  # a baseline's own input size (timm: resize then centre crop)
        resize, crop = encoder.config.get("resize"), encoder.config.get("crop")
    interpolation = encoder.config.get("interpolation", "bilinear")
    transform = build_transform(mean, std, resize, crop, interpolation)
    source = open_source(data, transform, slide_dir=slide_dir)
    fit_size, size_note = _fit_sizes(source, encoder, resize, crop)
    use_amp = amp and device.startswith("cuda")
    dtype = np.float16 if fp16 else np.float32
    attrs = {
        "method": encoder.config.get("method", ""),
        "arch": encoder.config.get("arch", ""),
        "checkpoint": "" if checkpoint is None else str(checkpoint.resolve()),
        "encoder": encoder.kind,
        "weights": encoder.config.get("weights") or "",
        "weights_sha256": encoder.config.get("weights_sha256", ""),
        "mean": list(mean),
        "std": list(std),
        "resize": resize or 0,
        "crop": crop or 0,
        "dtype": np.dtype(dtype).name,
    }
    writer = _BagWriter(source, out, attrs, dtype)
    start = time.perf_counter()
    done, feature_dim, num_clusters = _run(encoder, source, writer, device, batch_size, workers, use_amp, progress)
    seconds = time.perf_counter() - start
    write_index(out, writer.rows)
    summary = {
        "checkpoint": attrs["checkpoint"] or None,
        "data": str(Path(data).resolve()),
        "source": source.kind,
        "encoder": encoder.kind,
        "weights": encoder.config.get("weights"),
        "weights_sha256": attrs["weights_sha256"] or None,
        "random_init": bool(encoder.config.get("random_init", False)),
        "dropped_keys": encoder.config.get("dropped_keys", []),
        "interpolation": interpolation,
        "method": attrs["method"],
        "arch": attrs["arch"],
        "feature_dim": feature_dim,
        "num_clusters": num_clusters,
        "dtype": attrs["dtype"],
        "device": device,
        "amp": use_amp,
        "resize": resize,
        "crop": crop,
        "mean": list(mean),
        "std": list(std),
        "normalisation_from": norm_origin,
        "patch_sizes": {f"{w}x{h}": v for (w, h), v in sorted(source.sizes.items())},
        "fit_size": fit_size,
        "size_note": size_note,
        "missing_slides": source.missing_slides,
        **writer.totals(),
        "seconds": seconds,
        "patches_per_second": done / max(seconds, 1e-9),
    }
    atomic_write_json(out / "extract.json", summary)
    return summary


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


def _run(
    encoder,
    source: PatchSource,
    writer: _BagWriter,
    device: str,
    batch_size: int,
    workers: int,
    use_amp: bool,
    progress: bool,
) -> tuple[int, int, int]:
    """Encode every patch of ``source`` in order, handing slides to ``writer`` as they complete.

    Returns (patches seen, feature dim, number of clusters)."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        source.dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_patches,
        pin_memory=device.startswith("cuda"),
    )
    feature_dim = num_clusters = done = 0
    with (
        torch.inference_mode(),
        tqdm(total=len(source.dataset), desc="extract", unit="patch", disable=not progress) as bar,
    ):
        for images, indices, failures in loader:
            feats = probs = None
            if images is not None:
                images = images.to(device, non_blocking=True)
                if device.startswith("cuda"):
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                    f, p = encoder(images)
                feats = f.float().cpu().numpy()
                probs = None if p is None else p.float().cpu().numpy()
                feature_dim = feats.shape[1]
                num_clusters = 0 if probs is None else probs.shape[1]
                writer.attrs.update(feature_dim=feature_dim, num_clusters=num_clusters)
            writer.add(indices.numpy(), feats if feats is not None else np.zeros((0, 0)), probs, failures)
            n = len(indices) + len(failures)
            done += n
            writer.flush_until(done)
            bar.update(n)
            bar.set_postfix(slides=len(writer.rows), failed_patches=writer.num_failed_patches())
    writer.flush_until(len(source.dataset))
    return done, feature_dim, num_clusters
