"""Per-slide locks: ``OUT/locks/<slide_id>.lock``, so that jobs sharing an OUT never do a slide twice.

A lock is a file created with ``O_EXCL`` holding the owner's host, pid and start time; a
thread keeps touching it while the work runs (a heartbeat). It is stale, and taken over,
when its pid is dead on this host, or when it has not been touched for ``timeout_s``
(its owner died on another host, or hangs). Taking over is itself guarded by a short
``.break`` lock, so that two jobs finding the same stale lock cannot both win.
Works on any shared file system with atomic ``O_EXCL`` create (local disks, NFSv3+).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from ..utils.atomic import _pid_alive
from .records import safe_id

DEFAULT_TIMEOUT_S = 600.0
_BREAK_STALE_S = 30.0  # a .break lock older than this was left by a process killed while taking over


class SlideLock:
    """A held lock; :meth:`release` (or the context manager's exit) removes it."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(max(0.5, min(30.0, timeout_s / 4)),), daemon=True)
        self._beat.start()

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._stop.set()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> SlideLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_path(out: str | Path, slide_id: str) -> Path:
    return Path(out) / "locks" / f"{safe_id(slide_id)}.lock"


def read_owner(path: Path) -> dict | None:
    """The owner written in a lock file, or None (absent, or not yet written)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_stale(path: Path, timeout_s: float) -> bool:
    """Dead pid on this host, or untouched for ``timeout_s``; a lock that has vanished is not stale."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > timeout_s:
        return True
    owner = read_owner(path)
    if owner is None:  # being written right now, or written by a process killed in between
        return age > 5.0
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def acquire_lock(out: str | Path, slide_id: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> SlideLock | None:
    """Take the lock of ``slide_id`` (taking over a stale one); None when a live job holds it."""
    path = lock_path(out, slide_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create(path):
        return SlideLock(path, timeout_s)
    if not is_stale(path, timeout_s):
        return None
    guard = path.with_name(path.name + ".break")
    if not _create(guard):
        if not is_stale(guard, _BREAK_STALE_S):
            return None  # someone else is taking it over
        with contextlib.suppress(FileNotFoundError):
            guard.unlink()
        if not _create(guard):
            return None
    try:
        if is_stale(path, timeout_s):  # still the stale one (nobody took it over in between)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return SlideLock(path, timeout_s) if _create(path) else None
    finally:
        with contextlib.suppress(FileNotFoundError):
            guard.unlink()


@contextlib.contextmanager
def waiting_lock(out: str | Path, name: str, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 0.05):
    """Hold lock ``name`` of ``out`` for a short shared update (e.g. the manifest), waiting for it."""
    while (lock := acquire_lock(out, name, timeout_s)) is None:
        time.sleep(poll_s)
    with lock:
        yield lock
