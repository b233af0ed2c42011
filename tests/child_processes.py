"""The live descendants of this process, read from /proc (Linux; no psutil needed).

Used by conftest's check that the Ray and multiprocessing test modules end every process they start.
Zombies (exited, not yet reaped) are dead and not counted; multiprocessing's forkserver and resource
tracker are process-lifetime helpers of the interpreter (they exit with it) and are left out too.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, state, command name) of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
    return int(rest[1]), rest[0], name


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _interpreter_helpers() -> set[int]:
    """Pids of multiprocessing's forkserver and resource tracker, when this process started them."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    pids = {
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
        getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None),
    }
    return {pid for pid in pids if pid}


def live_descendants(root: int | None = None) -> dict[int, str]:
    """{pid: command line} of the live (not zombie) descendants of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _stat(int(entry.name))) is not None and info[1] != "Z":
            parents[int(entry.name)] = info[0]
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in found}
        found |= frontier
    helpers = _interpreter_helpers()
    return {pid: _cmdline(pid) for pid in sorted(found - helpers)}


def wait_for_no_descendants(timeout_s: float = 10.0) -> dict[int, str]:
    """Give exiting children ``timeout_s`` to go; returns those still alive then (empty: none left)."""
    end = time.monotonic() + timeout_s
    while (left := live_descendants()) and time.monotonic() < end:
        time.sleep(0.2)
    return left
