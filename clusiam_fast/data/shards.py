"""Pack patches into webdataset tar shards that DALI's ``fn.readers.webdataset`` streams.

Millions of small files are slow to list, copy and open; a few hundred tar files of
10,000 patches read sequentially are not. Sources: a folder (or list) of image files,
copied byte for byte, or a tiler ``manifest.csv``, whose patches are read from the
slides and encoded (JPEG quality 95 by default, or PNG).

Layout of ``OUT``::

    shard-000000.tar   members <key>.<jpg|png|...> and <key>.json ({"source": ..., ...})
    shard-000000.idx   DALI's webdataset index (``v1.2 <count>`` then one line per sample)
    ...
    shards.json        what was packed: counts, seed, the files left out and why

Samples are shuffled (``seed``) before packing, so DALI's contiguous per-rank ranges and
its shuffle buffer see a random order. Image files are decoded once by DALI's CPU decoder
while packing; undecodable ones are reported by name, counted and left out, so shards
hold only images that decode. Each file is written under a temporary name and renamed when complete.

CLI: ``python -m clusiam_fast.shards`` (:mod:`clusiam_fast.shards`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from .resolve import DataArg, as_data_arg
from .tolerant import TolerantDataset

log = logging.getLogger("clusiam_fast.data.shards")

_EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".tif": "tif", ".tiff": "tif"}


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644  # fixed metadata: same input, same bytes
    return info


class _ShardWriter:
    """Streams samples into ``shard-NNNNNN.tar`` (temporary name until complete) and its index."""

    def __init__(self, out_dir: Path, shard_index: int, first_key: int) -> None:
        self.path = out_dir / f"shard-{shard_index:06d}.tar"
        self.first_key, self.count = first_key, 0
        self.lines: list[str] = []
        self._atomic = atomic_path(self.path)
        self._tar = tarfile.open(self._atomic.__enter__(), "w", format=tarfile.USTAR_FORMAT)

    def add(self, ext: str, data: bytes, meta: dict) -> None:
        key = f"{self.first_key + self.count:09d}"
        parts = []
        for name, payload in ((f"{key}.{ext}", data), (f"{key}.json", json.dumps(meta, sort_keys=True).encode())):
            self._tar.addfile(_tar_info(name, len(payload)), io.BytesIO(payload))
            data_offset = self._tar.offset - (len(payload) + 511) // 512 * 512  # start of the member's bytes
            parts.append(f"{name.split('.', 1)[1]} {data_offset} {len(payload)} {name}")
        self.lines.append(" ".join(parts))
        self.count += 1

    def close(self, ok: bool = True) -> None:
        self._tar.close()
        self._atomic.__exit__(None if ok else RuntimeError, None, None)
        if ok:  # the index last: a shard with an index is complete
            atomic_write_text(self.path.with_suffix(".idx"), "\n".join([f"v1.2 {self.count}"] + self.lines) + "\n")


def write_shards(
    samples: Iterable[tuple[str, bytes, dict]],
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 10000,
    total: int | None = None,
) -> list[Path]:
    """Write ``(ext, image_bytes, meta)`` samples into tar shards plus DALI index files.

    Samples stream straight into the current tar. Keys are the running sample number
    (``000000042``). Shard files of an earlier run in ``out_dir`` beyond the new ones are
    removed, so the folder holds exactly this data set. Returns the shard paths.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    writer: _ShardWriter | None = None
    count = 0
    try:
        for ext, data, meta in tqdm(samples, total=total, desc="packing shards", unit="img"):
            if writer is None:
                writer = _ShardWriter(out_dir, len(shards), count)
            writer.add(ext, data, meta)
            count += 1
            if writer.count == shard_size:
                writer.close()
                shards.append(writer.path)
                writer = None
        if writer is not None:
            writer.close()
            shards.append(writer.path)
            writer = None
    finally:
        if writer is not None:
            writer.close(ok=False)
    keep = {p.name for p in shards} | {p.with_suffix(".idx").name for p in shards}
    for stale in sorted(out_dir.glob("shard-*.tar")) + sorted(out_dir.glob("shard-*.idx")):
        if stale.name not in keep:
            log.warning("removing %s, left from an earlier packing", stale)
            stale.unlink()
    return shards


def pack_images(
    paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 10000,
    seed: int = 0,
    workers: int = 4,
) -> dict:
    """Pack image files (bytes unchanged) into shards; returns the summary written to ``shards.json``.

    Files are first decoded by DALI's CPU decoder (the one that will read the shards);
    those it rejects are reported by name and left out.
    """
    from .dali_checks import check_headers, find_undecodable

    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("pack_images: no image files given")
    bad = check_headers(paths, threads=max(1, workers))
    bad.update(find_undecodable([p for p in paths if p not in bad], num_threads=max(1, workers), progress=True))
    skipped = [(p, bad[p]) for p in paths if p in bad]
    for path, reason in skipped:
        log.warning("skipping undecodable image %s: %s", path, reason)
    good = [p for p in paths if p not in bad]
    order = np.random.default_rng(seed).permutation(len(good))

    def samples() -> Iterator[tuple[str, bytes, dict]]:
        for i in order:
            path = good[i]
            ext = _EXT.get(Path(path).suffix.lower(), Path(path).suffix.lower().lstrip("."))
            yield ext, Path(path).read_bytes(), {"source": path}

    shards = write_shards(samples(), out_dir, shard_size=shard_size, total=len(good))
    return _summary(out_dir, shards, len(good), skipped, seed, source=f"{len(paths)} files")


class _EncodePatch:
    """Dataset transform: PIL patch -> encoded bytes (picklable for DataLoader workers)."""

    def __init__(self, fmt: str, quality: int) -> None:
        self.fmt, self.quality = fmt, quality

    def __call__(self, img) -> bytes:
        buf = io.BytesIO()
        if self.fmt == "jpg":
            img.convert("RGB").save(buf, format="JPEG", quality=self.quality)
        else:
            img.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()


def _first(batch):
    return batch[0]


def pack_manifest(
    manifest: DataArg | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 10000,
    seed: int = 0,
    fmt: str = "jpg",
    quality: int = 95,
    workers: int = 4,
) -> dict:
    """Read every patch of a tiler manifest from its slide, encode it, and pack it into shards.

    ``manifest``: the resolved DATA (:class:`~.resolve.DataArg`) or a manifest path (resolved here)."""
    import torch

    from .dali_sources import describe_patch
    from .slide_dataset import SlidePatchDataset

    if fmt not in ("jpg", "png"):
        raise ValueError(f"fmt must be 'jpg' or 'png', got {fmt!r}")
    manifest = as_data_arg(manifest, accept=("manifest",), what="manifest")
    dataset = SlidePatchDataset(manifest, transform=_EncodePatch(fmt, quality), return_coords=True)
    order = np.random.default_rng(seed).permutation(len(dataset))
    loader = torch.utils.data.DataLoader(
        TolerantDataset(dataset, indices=order), batch_size=1, num_workers=workers, collate_fn=_first
    )
    skipped: list[tuple[str, str]] = []

    def samples() -> Iterator[tuple[str, bytes, dict]]:
        for item, index, error in loader:
            if error is not None:
                where = describe_patch(dataset, index)
                log.warning("skipping unreadable patch %s: %s", where, error)
                skipped.append((str(where), error))
                continue
            data, (slide_index, x, y) = item
            yield fmt, data, {"slide_id": dataset.slides[slide_index].slide_id, "x": int(x), "y": int(y)}

    shards = write_shards(samples(), out_dir, shard_size=shard_size, total=len(dataset))
    return _summary(out_dir, shards, len(dataset) - len(skipped), skipped, seed, source=str(manifest.path))


def _summary(out_dir, shards: list[Path], packed: int, skipped: list[tuple[str, str]], seed: int, source: str) -> dict:
    summary = {
        "source": source,
        "seed": seed,
        "num_samples": packed,
        "num_shards": len(shards),
        "shards": [p.name for p in shards],
        "skipped": [{"item": a, "reason": b} for a, b in skipped],
    }
    atomic_write_json(Path(out_dir) / "shards.json", summary)
    if skipped:
        log.warning("packed %d samples; %d left out (listed in shards.json)", packed, len(skipped))
    return summary
