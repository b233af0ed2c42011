"""The science step's table: per method, held-out quality beside training speed and GPU memory.

Reads a finished study folder (``python -m clusiam_fast.study benchmarks/study_pcam_gpu.yaml``):
KNN-1 macro F1 with its bootstrap 95 % CI and the assigner's Rand index / ARI against K-means
from ``report.json``; images/s, MFU and the GPU memory peak from each method's ``log.csv``
(the last full epoch, else the partial one).

    python benchmarks/science_summary.py STUDY_DIR
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _last_epoch(log: Path) -> dict[str, str]:
    if not log.is_file():
        return {}
    rows = list(csv.DictReader(log.open()))
    full = [r for r in rows if r.get("partial") != "1"]
    return (full or rows or [{}])[-1]


def _num(value, fmt: str) -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "n/a"


def _ci(value, ci) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table(study: Path) -> str:
    report = json.loads((study / "report.json").read_text())
    lines = [
        "| method | steps | KNN-1 F1 [95% CI] | assigner RI / ARI | K-means RI / ARI | images/s | MFU | GPU peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.get("methods", []):
        knn, clusters = row.get("knn", {}), row.get("clustering", {})
        assigner, kmeans = clusters.get("assigner", {}), clusters.get("kmeans", {})
        log = _last_epoch(study / "runs" / row["name"] / "train" / "log.csv")
        lines.append(
            f"| {row['name']} | {row.get('trained_steps', 'n/a')} | {_ci(knn.get('f1_macro'), knn.get('f1_macro_ci95'))} "
            f"| {_num(assigner.get('rand_index'), '.3f')} / {_num(assigner.get('adjusted_rand_index'), '.3f')} "
            f"| {_num(kmeans.get('rand_index'), '.3f')} / {_num(kmeans.get('adjusted_rand_index'), '.3f')} "
            f"| {_num(log.get('images_per_s'), '.0f')} | {_num(log.get('mfu'), '.1%')} "
            f"| {_num(log.get('memory_peak_gib'), '.2f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "report.json").is_file():
        sys.exit("usage: python benchmarks/science_summary.py STUDY_DIR (a study folder with report.json)")
    print(table(Path(sys.argv[1])))
