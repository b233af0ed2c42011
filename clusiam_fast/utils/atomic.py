"""Atomic file writes: write to a temporary file beside the target, then rename.

A crash or Ctrl-C mid-write leaves the previous file intact and never a
partial one under the final name. The temporary file is hidden and names the
writing process: ``.<target name>.<pid>-<8 hex><suffix>.tmp``; a write killed
before its rename leaves one behind, which :func:`remove_stale_temps` deletes
at the next start. Files are created with mode ``0o666`` less the umask, as
``open()`` would create them.

The bytes reach the disk (``fsync``) before the rename, unless the caller passes ``durable=False``
for a file whose loss in a crash of the machine costs only work redone (a cohort's done record or QA
picture: the slide is done again) or that is a view of others (``cohort.json``).

A write that the file system refuses (disk full, quota, file too large, read-only
folder, no permission) raises :class:`WriteFailedError`: one line naming the file
and the OS reason; the previous file is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# .<name>.<pid>-<token><suffix>.tmp (this module) or .<name>.<8 chars><suffix>.tmp (tempfile.mkstemp, before)
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}(?:\.[^.]+)*\.tmp$")
_LEGACY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}(?:\.[^.]+)*\.tmp$")
LEGACY_MAX_AGE_S = 3600.0  # names without a pid: only this old ones are surely not being written


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


class WriteFailedError(OSError):
    """The file system refused to write an output file; ``str()`` is one line naming it and the OS reason."""

    def __str__(self) -> str:
        return self.strerror


def refused_write(path: str | os.PathLike, error: OSError) -> WriteFailedError | None:
    """The :class:`WriteFailedError` for ``error`` while writing ``path``, or None when it is not a refused write."""
    if error.errno not in _FULL + _READ_ONLY or isinstance(error, WriteFailedError):
        return None
    advice = {
        errno.ENOSPC: "free space or choose another --out",
        errno.EDQUOT: "free space (your quota is used up) or choose another --out",
        errno.EFBIG: "the file system or the process (ulimit -f) caps the file size: raise it or choose another --out",
    }.get(error.errno, "make the folder writable or choose another --out")
    return WriteFailedError(
        error.errno,
        f"cannot write {path}: {os.strerror(error.errno)} (errno {error.errno}); {advice}"
        + (" (the previous file is kept)" if Path(path).exists() else ""),
    )


def _create_temp(path: Path, suffix: str) -> Path:
    """Create (O_EXCL, mode 0o666 & ~umask) and return a fresh hidden temporary file beside ``path``."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` (fsynced first if ``durable``).

    ``suffix`` (default: the target's) lets libraries that look at the extension work.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path, path.suffix if suffix is None else suffix)
    except OSError as error:
        raise (refused_write(path, error) or error) from None
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:  # the OS refused the write (of tmp, not some file the caller read)
        if error.filename is not None and str(error.filename) not in (str(tmp), str(path)):
            raise
        raise (refused_write(path, error) or error) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (someone else's) or cannot tell: keep its files
    return True


def remove_stale_temps(folder: str | os.PathLike, min_age_s: float = 60.0) -> list[Path]:
    """Delete temporary files of killed atomic writes in ``folder`` (not recursive); returns them.

    A file is removed only when its name has this module's pattern, it is older than
    ``min_age_s`` and its writer's pid is not alive (names without a pid, from older
    versions: older than an hour). Anything else is left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed, now = [], time.time()
    for entry in folder.iterdir():
        name = entry.name
        if not name.startswith(".") or not name.endswith(".tmp"):
            continue
        match = _TEMP.match(name)
        if match is None and not _LEGACY_TEMP.match(name):
            continue
        try:
            if not entry.is_file() or entry.is_symlink():
                continue
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        if match is not None:
            stale = age > min_age_s and not _pid_alive(int(match["pid"]))
        else:
            stale = age > max(min_age_s, LEGACY_MAX_AGE_S)
        if stale:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", durable)


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, h5py: Any, suffix: str | None = None) -> Iterator[Any]:
    """Yield a new HDF5 file (h5py) built in memory; on success it is written to ``path`` atomically.

    Python's I/O writes the bytes, so a refused write is a :class:`WriteFailedError`: HDF5 writing a
    file itself reports it as tracebacks from its destructors and may crash the process at exit.
    """
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        yield f
    with atomic_path(path, suffix) as tmp:
        tmp.write_bytes(buffer.getbuffer())


class _WriteRecorder:
    """A binary file for ``torch.save`` that keeps the OSError of a failed write (torch turns it into a
    RuntimeError that names neither the file nor the reason)."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
            f.flush()
        except RuntimeError:
            if recorder.error is None:
                raise
            raise recorder.error from None
