"""Helpers shared by the benchmarks: timing that respects CUDA, peak memory, a ratio table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS: dict[str, float] = {}  # benchmark key -> median seconds, filled as benchmarks run
SUMMARIES: list[Callable[[], str]] = []  # printed at the end of the session (see conftest.py)
OUT = Path(__file__).resolve().parent / "results"


def synced(fn: Callable, device: str) -> Callable:
    """fn followed by a CUDA synchronisation, so that timings include the GPU work."""
    if device != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


def peak_memory_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated by tensors while fn runs (CUDA allocator stats, or the CPU profiler)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for event in prof.events():
        delta = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if delta:
            deltas.append((event.time_range.start, delta))
    live = peak = 0
    for _, delta in sorted(deltas):
        live += delta
        peak = max(peak, live)
    return peak


def record(benchmark, key: str, **extra) -> None:
    """Store the benchmark's median under key (for the ratio table) and extra figures in extra_info."""
    RESULTS[key] = benchmark.stats.stats.median
    benchmark.extra_info.update(extra)


def ratio(numerator: str, denominator: str) -> float | None:
    if numerator in RESULTS and denominator in RESULTS and RESULTS[denominator] > 0:
        return RESULTS[numerator] / RESULTS[denominator]
    return None


def write_summary(name: str, rows: list[tuple[str, float | None, str]]) -> str:
    """Print and save (JSON) a table of ratios measured in this run."""
    lines = [f"{'ratio':58s} {'value':>8s}  target"]
    for label, value, target in rows:
        lines.append(f"{label:58s} {f'{value:.2f}' if value is not None else 'n/a':>8s}  {target}")
    text = "\n".join(lines)
    OUT.mkdir(exist_ok=True)
    (OUT / f"{name}.json").write_text(
        json.dumps({"medians_s": RESULTS, "ratios": {label: value for label, value, _ in rows}}, indent=2)
    )
    return text
