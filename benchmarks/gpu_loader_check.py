"""DALI on the GPU: two-view 224-px images/s, and a GPU-vs-CPU check of the augmentation.

Run on a GPU machine (``benchmarks/gpu_check.sh`` calls it)::

    python benchmarks/gpu_loader_check.py [--images 4096] [--batch 512] [--threads 8] [--seconds 15]

Data: 224-px JPEG patches cut from scikit-image's immunohistochemistry image (shipped with
the package; nothing is downloaded), written to a temporary folder, so the check runs on
a bare machine. Steps:

1. GPU vs CPU: the same patches through ``build_dali_loader(device="gpu")`` and
   ``device="cpu"`` (the CPU pipeline is the one the parity tests compare with
   torchvision); per-channel means/stds of the views and the grayscale fraction must
   agree within the parity tests' tolerances. Prints PASS/FAIL.
2. Throughput: two-view images/s from files (nvJPEG ``mixed`` decoding) in float32 and
   float16, and from webdataset shards. Target on an H200: >= 10,000 images/s.
3. ``hw_decoder_load`` sweep (``--hw-loads``, default 0,0.65,1): float16 files at each share
   of JPEGs sent to the hardware decoder (the loader's default is DALI's 0.65).

If the default GPU graph fails, the error is printed and the run is retried with
``hue_mode="linear"`` so one GPU session still yields a figure. Results also go to
``$OUT/dali_gpu.json`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from clusiam_fast.utils.atomic import atomic_write_json

TARGET = 10_000.0
MEAN, STD = (0.60, 0.55, 0.60), (0.20, 0.20, 0.20)


def make_patches(folder: str | os.PathLike, n: int = 2048, size: int = 224, seed: int = 0) -> list[str]:
    """``n`` JPEG patches (quality 90) cut at random from scikit-image's IHC image, flipped/rotated."""
    from PIL import Image
    from skimage import data

    tissue = data.immunohistochemistry()  # 512 x 512 RGB, ships with scikit-image
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        y, x = rng.integers(0, tissue.shape[0] - size + 1, 2)
        patch = np.rot90(tissue[y : y + size, x : x + size], k=int(rng.integers(4)))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        path = folder / f"patch_{i:05d}.jpg"
        Image.fromarray(np.ascontiguousarray(patch)).save(path, quality=90)
        paths.append(str(path))
    return paths


def throughput(loader, min_seconds: float, sync: bool, warmup: int = 3) -> tuple[float, float]:
    """Steady-state two-view images/s inside epochs, and the median epoch start-up seconds.

    The first ``warmup`` batches of each epoch (building that epoch's pipeline, filling the
    prefetch queue) are timed separately: they are a per-epoch cost that a 2.6-million-patch
    epoch amortises, not the loader's rate.
    """
    if len(loader) < warmup + 2:
        raise ValueError(f"an epoch of {len(loader)} batches is too short to time; use more images")
    count, busy, startups = 0, 0.0, []
    while busy < min_seconds:
        start = time.perf_counter()
        for i, (v1, _) in enumerate(loader):
            if i == warmup - 1:
                if sync:
                    torch.cuda.synchronize()
                steady = time.perf_counter()
                startups.append(steady - start)
            elif i >= warmup:
                count += len(v1)
                if busy + time.perf_counter() - steady >= min_seconds:
                    break
        if sync:
            torch.cuda.synchronize()
        busy += time.perf_counter() - steady
    return count / busy, float(np.median(startups))


def view_stats(loader, batches: int) -> dict[str, list[float] | float]:
    """Channel means/stds (pixel units) and grayscale fraction over ``batches`` batches."""
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    sums, sq, count, gray, views = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0, 0, 0
    for i, (v1, v2) in enumerate(loader):
        for v in (v1, v2):
            x = v.float().cpu() * s + m
            sums += x.double().sum((0, 2, 3))
            sq += (x.double() ** 2).sum((0, 2, 3))
            count += x.shape[0] * x.shape[2] * x.shape[3]
            gray += int(((x.amax(1) - x.amin(1)).flatten(1).amax(1) < 1.5 / 255).sum())
            views += x.shape[0]
        if i + 1 >= batches:
            break
    mean = sums / count
    return {"mean": mean.tolist(), "std": (sq / count - mean**2).sqrt().tolist(), "gray": gray / views}


def gpu_vs_cpu(paths: list[str], batch: int, threads: int, hue_mode: str) -> bool:
    from clusiam_fast.data.dali import build_dali_loader

    hue_mode = "hsv" if hue_mode == "auto" else hue_mode  # "auto" means linear on the CPU
    common = dict(batch_size=batch, crop_size=224, mean=MEAN, std=STD, seed=0, num_threads=threads, hue_mode=hue_mode)
    batches = max(1, 4096 // batch)
    gpu = view_stats(build_dali_loader(paths, device="gpu", **common), batches)
    cpu = view_stats(build_dali_loader(paths, device="cpu", **common), batches)
    ok = (
        np.allclose(gpu["mean"], cpu["mean"], atol=0.012)
        and np.allclose(gpu["std"], cpu["std"], atol=0.009)
        and abs(gpu["gray"] - cpu["gray"]) < 0.03
    )
    print(
        f"GPU vs CPU ({hue_mode} hue, {2 * batches * batch} views): mean {np.round(gpu['mean'], 4)} vs "
        f"{np.round(cpu['mean'], 4)} | std {np.round(gpu['std'], 4)} vs {np.round(cpu['std'], 4)} | "
        f"gray {gpu['gray']:.3f} vs {cpu['gray']:.3f} -> {'PASS' if ok else 'FAIL'}"
    )
    return ok


def run(args, workdir: Path, hue_mode: str) -> dict:
    from clusiam_fast.data.dali import build_dali_loader
    from clusiam_fast.data.shards import pack_images

    paths = make_patches(workdir / "patches", args.images)
    result: dict = {
        "hue_mode": hue_mode,
        "batch": args.batch,
        "threads": args.threads,
        "images": args.images,
        "gpu": torch.cuda.get_device_name(),
    }
    result["gpu_matches_cpu"] = gpu_vs_cpu(paths, min(args.batch, 256), args.threads, hue_mode)
    common = dict(
        batch_size=args.batch,
        crop_size=224,
        mean=MEAN,
        std=STD,
        device="gpu",
        num_threads=args.threads,
        hue_mode=hue_mode,
    )
    repeat = max(1, math.ceil(args.seconds * 1.2 * TARGET / len(paths)))  # one epoch ~ the timed span
    for name, dtype in (("files_float32", torch.float32), ("files_float16", torch.float16), ("shards_float16", None)):
        if dtype is None:
            pack_images(paths * 4, workdir / "shards", shard_size=4096)
            source, dtype = str(workdir / "shards"), torch.float16
        else:
            source = paths * repeat
        loader = build_dali_loader(source, dtype=dtype, validate="none", **common)
        rate, startup = throughput(loader, args.seconds, sync=True)
        result[f"{name}_images_per_s"], result[f"{name}_epoch_startup_s"] = rate, startup
        print(
            f"DALI GPU two-view 224 px, {name:15s}: {rate:8.0f} images/s "
            f"({'meets' if rate >= TARGET else 'BELOW'} the {TARGET:.0f}/s target); epoch start-up {startup:.2f} s"
        )
    for load in args.hw_loads:
        loader = build_dali_loader(paths * repeat, dtype=torch.float16, validate="none", hw_decoder_load=load, **common)
        rate, _ = throughput(loader, args.seconds, sync=True)
        result[f"hw_decoder_load_{load:g}_images_per_s"] = rate
        print(f"DALI GPU two-view 224 px, files_float16, hw_decoder_load {load:g}: {rate:8.0f} images/s")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4096, help="synthetic 224-px patches (default 4096)")
    parser.add_argument("--batch", type=int, default=512, help="per-GPU batch (default 512, the paper's)")
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="DALI CPU threads")
    parser.add_argument("--seconds", type=float, default=15.0, help="minimum timed seconds per case")
    parser.add_argument(
        "--hw-loads",
        type=lambda text: [float(v) for v in text.split(",") if v],
        default=[0.0, 0.65, 1.0],
        help="hw_decoder_load values to sweep, comma-separated (default 0,0.65,1; empty: no sweep)",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_loader_check: no CUDA GPU visible; skipped")
        return 0
    out_dir = Path(os.environ.get("OUT", Path(__file__).resolve().parent / "results"))
    result, status = None, 1
    with tempfile.TemporaryDirectory(prefix="dali_gpu_check_") as tmp:
        for hue_mode in ("auto", "linear"):
            try:
                result = run(args, Path(tmp) / hue_mode, hue_mode)
                status = 0 if result["gpu_matches_cpu"] else 1
                break
            except Exception:  # report, then retry with the simpler colour graph
                print(f"gpu_loader_check: hue_mode={hue_mode!r} failed:\n{traceback.format_exc()}", file=sys.stderr)
    if result is not None:
        atomic_write_json(out_dir / "dali_gpu.json", result)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
