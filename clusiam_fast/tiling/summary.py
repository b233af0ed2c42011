"""``OUT/summary.md``: what one tiling run did, for people (``cohort.json`` is the machine's view).

Slides done (patches, read level and size, mpp, reader), failed with their reasons, skipped as
already done and left out by ``--slide-params``; patches; wall time; every setting of the run.
Rewritten, atomically, at the end of each run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_text


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def run_summary(
    report, settings: Mapping[str, Any], seconds: float, *, excluded: Iterable[str] = (), run: Mapping[str, Any] = ()
) -> str:
    """The markdown of one run: ``report`` (a TilingReport), the cohort ``settings``, how it ran (``run``)."""
    excluded = sorted(excluded)
    patches = sum(int(r["num_patches"]) for r in report.rows)
    lines = [
        f"# Tiling run of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime())}",
        "",
        f"- slides tiled: {len(report.rows)}; failed: {len(report.failures)}; skipped as already done: "
        f"{report.skipped}; left to another job: {len(report.elsewhere)}; left out (--slide-params keep=0): "
        f"{len(excluded)}",
        f"- patches: {patches}",
        f"- wall time: {seconds:.1f} s",
        f"- manifest: {report.manifest}",
        "",
        "## Settings",
        "",
        *_table(["setting", "value"], [*sorted(dict(run).items()), *_flat(settings)]),
    ]
    if report.rows:
        lines += ["", "## Slides tiled", ""]
        lines += _table(
            ["slide", "patches", "read level", "read px", "mpp", "reader", "corrupt patches dropped"],
            [
                [r["slide_id"], r["num_patches"], r["read_level"], r["read_size"], r["mpp"], r["backend"]]
                + [r.get("corrupt_patches", 0)]
                for r in report.rows
            ],
        )
    if report.failures:
        lines += ["", "## Slides failed", ""]
        lines += _table(["slide", "reason"], [[f.path.name, f.error] for f in report.failures])
    if excluded:
        lines += ["", "## Slides left out", "", ", ".join(excluded)]
    return "\n".join(lines) + "\n"


def _flat(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in sorted(settings.items()):
        if isinstance(value, Mapping):
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def write_run_summary(out_dir: str | Path, *args, **kwargs) -> Path:
    """Write :func:`run_summary` to ``OUT/summary.md``, atomically."""
    path = Path(out_dir) / "summary.md"
    atomic_write_text(path, run_summary(*args, **kwargs), durable=False)
    return path
