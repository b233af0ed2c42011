"""Finding undecodable images before and during a DALI epoch.

DALI stops the whole pipeline when one image fails to decode, so bad files are
handled in two layers:

1. :func:`check_header` (before training, threads, no decoding): empty files, unknown
   signatures, JPEGs without an end-of-image marker and PNGs without an ``IEND`` chunk
   (the usual truncated copy). Cheap: two small reads per file.
2. :func:`probe_decode` (only after DALI raised): each file of the batches in flight is
   decoded alone by a one-sample DALI pipeline on the same device, which names the
   culprits that passed the header check (for example a corrupt Huffman table, which
   PIL may even accept).
3. :func:`find_undecodable`: decode everything with DALI, in batches, probing a batch
   file by file only when it fails (``validate="decode"``, and the shard packer).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger("clusiam_fast.data.dali")

_TAIL = 1024  # bytes searched for the end marker (some writers pad after it)


def check_header(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a decodable image, or None when its header and end look sound."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except OSError as error:
        return f"cannot read: {error.strerror or error}"
    if head[:3] == b"\xff\xd8\xff":
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in tail[-64:] else "truncated PNG (no IEND chunk)"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return None  # TIFF: no end marker to check
    if head[:2] == b"BM" or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xff\x4f\xff\x51":
        return None  # JPEG 2000
    return "not an image DALI decodes (unknown file signature)"


def check_headers(paths: Sequence[str], *, threads: int = 8, progress: bool | None = None) -> dict[str, str]:
    """``{path: reason}`` for every path that fails :func:`check_header` (threads, progress bar)."""
    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = pool.map(check_header, paths, chunksize=256)
        for path, reason in tqdm(
            zip(paths, results),
            total=len(paths),
            desc="checking images",
            disable=(len(paths) < 20000) if progress is None else not progress,
            leave=False,
        ):
            if reason is not None:
                bad[path] = reason
    return bad


class _Paths:
    """External-source callback yielding the encoded paths set in ``batch``."""

    def __init__(self) -> None:
        self.batch: list[str] = []

    def __call__(self, _iteration: int):
        return [np.frombuffer(os.fsencode(p), dtype=np.uint8) for p in self.batch]


def _decoder_pipeline(feeder: _Paths, batch_size: int, num_threads: int, gpu: bool, device_id: int | None):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(
        batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None, prefetch_queue_depth=1
    )
    def decode():
        raw = fn.io.file.read(fn.external_source(source=feeder, batch=True, dtype=types.UINT8, ndim=1))
        return fn.decoders.image(raw, device="mixed" if gpu else "cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    return pipe


def probe_decode(paths: Iterable[str], *, gpu: bool = False, device_id: int | None = None) -> dict[str, str]:
    """``{path: DALI's error}`` for the paths DALI cannot read and decode, one file at a time."""
    feeder, pipe, bad = _Paths(), None, {}
    for path in dict.fromkeys(paths):  # unique, in order
        feeder.batch = [path]
        if pipe is None:
            pipe = _decoder_pipeline(feeder, 1, 1, gpu, device_id)
        try:
            pipe.run()
        except Exception as error:  # DALI raises RuntimeError; the pipeline is then unusable
            bad[path] = _short_error(error)
            pipe = None
    return bad


def find_undecodable(
    paths: Sequence[str],
    *,
    gpu: bool = False,
    device_id: int | None = None,
    batch_size: int = 256,
    num_threads: int = 2,
    progress: bool | None = None,
) -> dict[str, str]:
    """``{path: reason}`` for every file DALI's decoder rejects (batches; failing ones file by file)."""
    feeder, pipe, bad = _Paths(), None, {}
    starts = range(0, len(paths), batch_size)
    for start in tqdm(
        starts, desc="decoding images", leave=False, disable=(len(paths) < 20000) if progress is None else not progress
    ):
        feeder.batch = list(paths[start : start + batch_size])
        if pipe is None:
            pipe = _decoder_pipeline(feeder, batch_size, num_threads, gpu, device_id)
        try:
            pipe.run()
        except Exception:
            pipe = None
            bad.update(probe_decode(feeder.batch, gpu=gpu, device_id=device_id))
    return bad


def _short_error(error: BaseException) -> str:
    """The informative line of a DALI error (DALI wraps the cause in a long traceback)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        return "DALI cannot decode it: " + lines[lines.index("encountered:") + 1].rstrip(" :")
    return "DALI cannot decode it: " + (lines[-1] if lines else type(error).__name__)
