"""Slides straight to batches: two-view training batches and extraction, decoded on the CPU or the GPU.

Run: ``pytest benchmarks/bench_slide_loader.py --benchmark-only``. The data: CMU-1-Small-Region
and the TCGA slide of ``../shared/data/wsi`` tiled at 0.5 um/px, 224 px patches with stride 112
(overlapping, so that a round has a few hundred patches).

- two-view batches of 224-px views, the paper's recipe, batch 32, one epoch per round:
  torch loader (``SlidePatchDataset`` batched reads + torchvision twice, this process),
  DALI CPU (1 Python reader process, 1 DALI thread), and with a GPU: DALI GPU with patches
  decoded on the CPU vs by cuCIM on the GPU (``--decode-device cuda``).
- extraction patches/s (``extract()``, a ResNet-18, batch 64): ``--decode-device cpu`` with
  the torch loader; with a GPU, cpu vs cuda decode, torch and DALI loaders.

``extra_info`` holds patches/s. The GPU cases are marked ``cuda`` and skipped without one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from bench_utils import SUMMARIES, ratio, record, write_summary

WSI = Path(os.environ.get("CLUSIAM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "wsi"
SLIDES = ("CMU-1-Small-Region.svs", "tcga-cr-7395-01a-01-ts1.svs")
MEAN, STD, BATCH = (0.70, 0.54, 0.69), (0.22, 0.27, 0.20), 32
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from clusiam_fast.tiling import TileConfig, tile_slides

    if not (WSI / SLIDES[0]).exists():
        pytest.skip(f"real slides {WSI} are absent (set CLUSIAM_SHARED_DATA to the shared/data folder)")
    out = tmp_path_factory.mktemp("slide_loader")
    config = TileConfig(target_mpp=0.5, stride=112, slide_mpp=0.25)
    report = tile_slides([WSI / name for name in SLIDES], out, config, progress=False)
    assert report.ok, report.summary()
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("backbone") / "resnet18.pt"
    torch.save({k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}, path)
    return path


def _measure(benchmark, key: str, fn, patches: int, rounds: int = 2) -> None:
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    record(benchmark, key, patches_per_s=patches / benchmark.stats.stats.median, patches=patches)
    COUNTS[key] = patches


def test_two_view_torch(benchmark, manifest, one_thread):
    from clusiam_fast.data.augment import TwoViews, paper_augmentation
    from clusiam_fast.data.slide_dataset import SlidePatchDataset

    benchmark.group = "slides -> two-view batches"
    dataset = SlidePatchDataset(manifest, transform=TwoViews(paper_augmentation(224, MEAN, STD)))
    n = len(dataset) // BATCH * BATCH

    def epoch():
        for start in range(0, n, BATCH):
            views = dataset.__getitems__(range(start, start + BATCH))
            torch.stack([v for v, _ in views]), torch.stack([v for _, v in views])

    _measure(benchmark, "two-view/torch", epoch, n)


def _dali_two_view(manifest, **kwargs):
    from clusiam_fast.data.dali import build_dali_loader

    loader = build_dali_loader(manifest, batch_size=BATCH, crop_size=224, mean=MEAN, std=STD, **kwargs)

    def epoch():
        for _ in loader:
            pass
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return epoch, len(loader) * BATCH


def test_two_view_dali_cpu(benchmark, manifest):
    pytest.importorskip("nvidia.dali")
    benchmark.group = "slides -> two-view batches"
    epoch, n = _dali_two_view(manifest, num_threads=1, py_workers=1)
    _measure(benchmark, "two-view/dali-cpu", epoch, n)


@pytest.mark.cuda
@GPU
@pytest.mark.parametrize("decode", ["cpu", "cuda"])
def test_two_view_dali_gpu(benchmark, manifest, decode):
    pytest.importorskip("nvidia.dali")
    benchmark.group = "slides -> two-view batches"
    epoch, n = _dali_two_view(manifest, device="gpu", num_threads=4, py_workers=4, decode_device=decode)
    _measure(benchmark, f"two-view/dali-gpu-decode-{decode}", epoch, n, rounds=3)


def _extract(benchmark, key, manifest, backbone, tmp_path, **kwargs) -> None:
    from clusiam_fast.extraction.pipeline import extract

    runs = iter(range(100))
    summaries = []

    def run():
        out = tmp_path / f"run{next(runs)}"
        summaries.append(
            extract(backbone, manifest, out, batch_size=64, workers=1, progress=False, mean=MEAN, std=STD, **kwargs)
        )

    benchmark.group = "extract"
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    n = summaries[-1]["num_patches"]
    record(benchmark, key, patches_per_s=n / benchmark.stats.stats.median, patches=n)
    COUNTS[key] = n


def test_extract_decode_cpu(benchmark, manifest, backbone, tmp_path):
    _extract(benchmark, "extract/torch-decode-cpu", manifest, backbone, tmp_path, device="cpu")


@pytest.mark.cuda
@GPU
@pytest.mark.parametrize("loader", ["torch", "dali"])
@pytest.mark.parametrize("decode", ["cpu", "cuda"])
def test_extract_gpu(benchmark, manifest, backbone, tmp_path, loader, decode):
    if loader == "dali":
        pytest.importorskip("nvidia.dali")
    key = f"extract/gpu-{loader}-decode-{decode}"
    _extract(benchmark, key, manifest, backbone, tmp_path, device="cuda", loader=loader, decode_device=decode)


def _summary() -> str:
    def rate(key: str) -> float | None:
        from bench_utils import RESULTS

        return COUNTS[key] / RESULTS[key] if key in RESULTS and key in COUNTS else None

    rows = [
        ("two-view torch loader, patches/s", rate("two-view/torch"), "info"),
        ("two-view DALI CPU (1 reader, 1 thread), patches/s", rate("two-view/dali-cpu"), "info"),
        ("two-view DALI GPU, CPU decode, patches/s", rate("two-view/dali-gpu-decode-cpu"), "info"),
        ("two-view DALI GPU, cuCIM GPU decode, patches/s", rate("two-view/dali-gpu-decode-cuda"), "info"),
        ("DALI CPU vs torch loader (two-view, wall)", ratio("two-view/torch", "two-view/dali-cpu"), ">= 1"),
        ("extract CPU, decode cpu, patches/s", rate("extract/torch-decode-cpu"), "info"),
        (
            "extract GPU torch, decode cuda vs cpu",
            ratio("extract/gpu-torch-decode-cpu", "extract/gpu-torch-decode-cuda"),
            "> 1",
        ),
        (
            "extract GPU dali, decode cuda vs cpu",
            ratio("extract/gpu-dali-decode-cpu", "extract/gpu-dali-decode-cuda"),
            "> 1",
        ),
    ]
    if all(value is None for _, value, _ in rows):
        return ""
    return write_summary("slide_loader", rows)


SUMMARIES.append(_summary)
