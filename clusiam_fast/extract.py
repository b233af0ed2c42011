"""Extract feature bags: ``python -m clusiam_fast.extract CHECKPOINT DATA --out DIR``.

CHECKPOINT is a trainer checkpoint (``clusiam_fast.models.load_checkpoint``) or a
ResNet state_dict written by ``clusiam_fast.train --export-backbone``. DATA is a tiler
``manifest.csv`` (or the folder holding it): patches are read on the fly from the
slides; or a folder of patch images: one bag per folder that directly holds images,
named by its path relative to DATA (see :mod:`clusiam_fast.evaluation.sources`).

Output format (one "bag" per slide)::

    DIR/bags/<slide_id>.h5     (slide_id made file-system safe: '/' -> '__')
        features   (N, F) float32, or float16 with --fp16  backbone output (512 for resnet18)
        probs      (N, K) same dtype                        assigner softmax (cluster methods only)
        clusters   (N,)   int32                             argmax of the assigner
        coords     (N, 2) int64                             level-0 (x, y) (manifest input only)
        paths      (N,)   utf-8 strings                     image paths relative to DATA (folder input)
        attrs: slide_id, source, feature_dim, num_clusters (0 without assigner), method,
               arch, checkpoint, mean, std, resize, crop, dtype, and for slides
               slide_path, mpp, target_mpp, patch_size, read_level, read_size,
               backend, thumbnail, h5_path (from the manifest)
    DIR/index.csv              slide_id,bag_path,num_patches,num_failed
    DIR/extract.json           settings, normalisation used, failures by name, throughput

The HDF5 files are CLAM-compatible feature files (``features``, ``coords``). An
unreadable patch is reported by name and left out of its bag; a slide whose patches
all fail gets no bag and is listed under ``failed_slides``; neither stops the run.

Normalisation (must match training): ``--mean/--std``, else the statistics stored in
the trainer checkpoint (``norm_stats``, or ``mean``/``std`` in its config), else
``norm_stats.json`` beside the checkpoint (the trainer caches it in its run folder,
where ``--export-backbone`` files usually sit too), else ImageNet statistics with a
warning.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .evaluation.encoder import Encoder, load_encoder
from .evaluation.feature_bags import FeatureBag, safe_name, write_bag, write_index
from .evaluation.sources import PatchSource, SlideEntry, collate_patches, open_source
from .utils.atomic import atomic_write_json

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_normalisation(encoder: Encoder, checkpoint: Path, mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[list[float], list[float], str]:
    """(mean, std, where they came from); see the module docstring for the order."""
    if mean is not None and std is not None:
        return list(mean), list(std), "command line"
    cfg = encoder.config
    for m_key, s_key in (("mean", "std"), ("norm_mean", "norm_std")):
        if cfg.get(m_key) is not None and cfg.get(s_key) is not None:
            return [float(v) for v in cfg[m_key]], [float(v) for v in cfg[s_key]], f"checkpoint config ({m_key}/{s_key})"
    stats = cfg.get("norm_stats")
    if isinstance(stats, dict) and "mean" in stats and "std" in stats:
        return [float(v) for v in stats["mean"]], [float(v) for v in stats["std"]], "checkpoint config (norm_stats)"
    for folder in (checkpoint.parent, checkpoint.parent.parent):
        path = folder / "norm_stats.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return [float(v) for v in data["mean"]], [float(v) for v in data["std"]], str(path)
    warnings.warn(f"no normalisation statistics found for {checkpoint} (no --mean/--std, none in its config, no norm_stats.json beside it); using ImageNet's", stacklevel=2)
    return list(IMAGENET_MEAN), list(IMAGENET_STD), "ImageNet (fallback)"


def build_transform(mean: Sequence[float], std: Sequence[float], resize: int | None = None, crop: int | None = None):
    """PIL RGB -> normalised tensor: optional resize (shorter side), optional centre crop."""
    from torchvision import transforms as T

    steps = []
    if resize:
        steps.append(T.Resize(resize))
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

    def add(self, indices: np.ndarray, features: np.ndarray, probs: np.ndarray | None, failures: list[tuple[int, str]]) -> None:
        for i, error in failures:
            self.failed.setdefault(self.slide_of(i), []).append({"patch": self.source.item_name(i), "error": error})
        if len(indices):
            owner = np.searchsorted(self.starts, indices, side="right") - 1
            for s in np.unique(owner):
                sel = owner == s
                self.parts.setdefault(int(s), []).append((indices[sel], features[sel], None if probs is None else probs[sel]))

    def flush_until(self, done: int) -> None:
        """Write every slide whose patches all have index < ``done``."""
        while self.next_slide < len(self.source.slides) and self.source.slides[self.next_slide].stop <= done:
            self._write(self.next_slide, self.source.slides[self.next_slide])
            self.next_slide += 1

    def _write(self, k: int, slide: SlideEntry) -> None:
        parts = self.parts.pop(k, [])
        failures = self.failed.pop(k, [])
        if not parts:
            self.failed_slides.append({"slide_id": slide.slide_id, "reason": f"all {slide.stop - slide.start} patches failed",
                                       "num_failed": len(failures), "failures": failures[:20]})
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
        self.rows.append({"slide_id": slide.slide_id, "bag_path": rel.as_posix(), "num_patches": len(bag), "num_failed": len(failures), "failures": failures})


def extract(
    checkpoint: str | Path,
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
) -> dict:
    """Write one feature bag per slide of ``data`` into ``out``; return the summary (extract.json)."""
    from tqdm.auto import tqdm

    checkpoint, out = Path(checkpoint), Path(out)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    encoder = load_encoder(checkpoint).to(device)
    if device.startswith("cuda"):
        encoder = encoder.to(memory_format=torch.channels_last)
    mean, std, norm_origin = resolve_normalisation(encoder, checkpoint, mean, std)
    source = open_source(data, build_transform(mean, std, resize, crop))
    use_amp = amp and device.startswith("cuda")
    dtype = np.float16 if fp16 else np.float32
    attrs = {
        "method": encoder.config.get("method", ""), "arch": encoder.config.get("arch", ""), "checkpoint": str(checkpoint.resolve()),
        "mean": list(mean), "std": list(std), "resize": resize or 0, "crop": crop or 0, "dtype": np.dtype(dtype).name,
    }
    writer = _BagWriter(source, out, attrs, dtype)
    loader = torch.utils.data.DataLoader(source.dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_patches, pin_memory=device.startswith("cuda"))
    feature_dim = num_clusters = 0
    start = time.perf_counter()
    done = 0
    with torch.inference_mode(), tqdm(total=len(source.dataset), desc="extract", unit="patch", disable=not progress) as bar:
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
            bar.set_postfix(slides=len(writer.rows), failed_patches=sum(len(v) for v in writer.failed.values()) + sum(r["num_failed"] for r in writer.rows))
    writer.flush_until(len(source.dataset))
    seconds = time.perf_counter() - start
    write_index(out, writer.rows)
    failures = {r["slide_id"]: r["failures"] for r in writer.rows if r["failures"]}
    summary = {
        "checkpoint": str(checkpoint.resolve()), "data": str(Path(data).resolve()), "source": source.kind, "encoder": encoder.kind,
        "method": attrs["method"], "arch": attrs["arch"], "feature_dim": feature_dim, "num_clusters": num_clusters,
        "dtype": attrs["dtype"], "device": device, "amp": use_amp, "resize": resize, "crop": crop,
        "mean": list(mean), "std": list(std), "normalisation_from": norm_origin,
        "num_slides": len(writer.rows), "num_patches": int(sum(r["num_patches"] for r in writer.rows)),
        "num_failed_patches": int(sum(r["num_failed"] for r in writer.rows) + sum(f["num_failed"] for f in writer.failed_slides)),
        "failed_patches": failures, "failed_slides": writer.failed_slides,
        "seconds": seconds, "patches_per_second": done / max(seconds, 1e-9),
    }
    atomic_write_json(out / "extract.json", summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clusiam_fast.extract", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="trainer checkpoint (.pt) or ResNet state_dict from --export-backbone")
    p.add_argument("data", type=Path, help="tiler manifest.csv (or its folder), or a folder of patch images")
    p.add_argument("--out", type=Path, required=True, help="output folder for bags/, index.csv and extract.json")
    p.add_argument("--batch-size", type=int, default=128, help="patches per forward pass (default 128)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes reading patches (default 2)")
    p.add_argument("--fp16", action="store_true", help="store features and probabilities as float16 (half the disk and memory)")
    p.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when available)")
    p.add_argument("--no-amp", action="store_true", help="disable float16 autocast on the GPU (AMP is on by default on CUDA, never on CPU)")
    p.add_argument("--resize", type=int, default=None, help="resize patches (shorter side) to this many px first (default: as read)")
    p.add_argument("--crop", type=int, default=None, help="then centre-crop to this many px (default: none)")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="normalisation mean R G B in [0, 1] (default: from the checkpoint, see above)")
    p.add_argument("--std", type=float, nargs=3, default=None, help="normalisation std R G B (default: from the checkpoint)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = extract(args.checkpoint, args.data, args.out, batch_size=args.batch_size, workers=args.workers, fp16=args.fp16,
                          device=args.device, amp=not args.no_amp, resize=args.resize, crop=args.crop, mean=args.mean, std=args.std,
                          progress=not args.quiet)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"extract: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary['num_slides']} bags ({summary['num_patches']} patches, {summary['feature_dim']}-d, "
          f"{summary['num_clusters']} clusters) to {args.out} at {summary['patches_per_second']:.0f} patches/s")
    if summary["num_failed_patches"] or summary["failed_slides"]:
        print(f"{summary['num_failed_patches']} patches and {len(summary['failed_slides'])} slides failed; see {args.out / 'extract.json'}", file=sys.stderr)
        return 1 if summary["failed_slides"] else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
