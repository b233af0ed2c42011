"""Per-slide locks: ``OUT/locks/<slide_id>.lock``, so that jobs sharing an OUT never do a slide twice.

A lock is a file created with ``O_EXCL`` holding the owner's host, pid and start time; a
thread keeps touching it while the work runs (a heartbeat). It is stale, and taken over,
when its pid is dead on this host, or when it has not been touched for ``timeout_s``
(its owner died on another host, or hangs). Taking over is itself guarded by a short
``.break`` lock, so that two jobs finding the same stale lock cannot both win.
Works on any shared file system with atomic ``O_EXCL`` create (local disks, NFSv3+).
A malformed lock (not a JSON object with a host and a pid, or an empty folder) is stale at
once: it is removed and the slide taken over, named on the console; a folder with files
in it at a lock path is an error naming it (:class:`LockError`).
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
from .records import note, safe_id

DEFAULT_TIMEOUT_S = 600.0
_BREAK_STALE_S = 30.0  # a .break lock older than this was left by a process killed while taking over


class LockError(ValueError):
    """A lock path that cannot be taken over; the message names it and what to do."""


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
    """The owner written in a lock file, or None (absent, not yet written, or malformed)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return None if owner_problem(owner) else owner


def owner_problem(owner) -> str | None:
    """Why a lock's parsed JSON is not an owner (host and pid), or None."""
    if not isinstance(owner, dict):
        return f"holds a JSON {type(owner).__name__}, not an owner"
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return f"holds pid {pid!r}, not a process id"
    if not isinstance(owner.get("host"), str):
        return f"holds host {owner.get('host')!r}, not a host name"
    return None


def malformed(path: Path) -> str | None:
    """Why the lock at ``path`` is malformed (a folder, or JSON that is not an owner), or None."""
    if path.is_dir():
        return "is a folder"
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # vanished, or not yet written: judged by its age
    return owner_problem(owner)


def is_stale(path: Path, timeout_s: float) -> bool:
    """Dead pid on this host, untouched for ``timeout_s``, or malformed; a lock that has vanished is not stale."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > timeout_s or malformed(path):
        return True
    owner = read_owner(path)
    if owner is None:  # being written right now, or written by a process killed in between
        return age > 5.0
    return owner.get("host") == socket.gethostname() and not _pid_alive(owner["pid"])


def _remove(path: Path) -> None:
    """Remove a stale lock (named on the console when it was malformed)."""
    problem = malformed(path)
    try:
        path.rmdir() if problem == "is a folder" else path.unlink()
    except FileNotFoundError:
        return
    except OSError as error:
        raise LockError(f"lock {path} {problem or 'is stale'} and cannot be removed ({error}); remove it") from None
    if problem:
        note(f"removed malformed lock {path} ({problem}); the slide is taken over")


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:  # not fsynced: a lock left empty by a machine crash is malformed, taken over
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}, f)
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
            _remove(path)
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
