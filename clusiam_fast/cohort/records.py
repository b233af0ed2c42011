"""Done records: ``OUT/done/<slide_id>.json``, written atomically once a slide's outputs are complete.

A record holds what decides whether the slide needs doing again: its inputs (path, size,
mtime), the settings (and their hash), the outputs (paths relative to OUT) and whatever
the step reports (``result``: e.g. the manifest row), plus who did it (host, pid, time).
A slide is done when its record exists, its inputs are unchanged and its settings hash
matches; a record with other settings is refused (:class:`SettingsChangedError`) unless
``redo``. Failed slides get ``OUT/failed/<slide_id>.json`` (removed once they succeed).
``OUT/done.log`` gets one line per completed slide (JSON: slide_id, host, pid, time), appended
with a single ``O_APPEND`` write: the audit trail that no slide was done twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_json

DONE, FAILED = "done", "failed"


class SettingsChangedError(ValueError):
    """Slides of OUT were done with other settings; re-run with --redo (or another --out)."""


def safe_id(slide_id: str) -> str:
    """A file name for ``slide_id`` ('/' -> '__', as feature bags do)."""
    return slide_id.replace("/", "__").replace("\\", "__")


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A stable 16-hex hash of JSON-able settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def inputs_stamp(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """(path, size, mtime_ns) of each input file; a missing one has size -1."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            stamps.append({"path": str(path), "size": -1, "mtime_ns": 0})
    return stamps


def record_path(out: str | Path, slide_id: str, kind: str = DONE) -> Path:
    return Path(out) / kind / f"{safe_id(slide_id)}.json"


def read_done(out: str | Path, slide_id: str, kind: str = DONE) -> dict[str, Any] | None:
    """The record of ``slide_id`` or None (absent or unreadable: then the slide is not done)."""
    try:
        return json.loads(record_path(out, slide_id, kind).read_text())
    except (OSError, ValueError):
        return None


def write_done(
    out: str | Path,
    slide_id: str,
    inputs: list[dict[str, Any]],
    settings: Mapping[str, Any],
    result: Any,
    outputs: Iterable[str] = (),
    seconds: float = 0.0,
) -> Path:
    """Record ``slide_id`` as done (atomically); clears its failure record."""
    path = record_path(out, slide_id)
    atomic_write_json(
        path,
        {
            "slide_id": slide_id,
            "status": DONE,
            "inputs": inputs,
            "settings": dict(settings),
            "settings_hash": settings_hash(settings),
            "outputs": list(outputs),
            "result": result,
            "seconds": round(seconds, 3),
            **_who(),
        },
    )
    with contextlib.suppress(FileNotFoundError):
        record_path(out, slide_id, FAILED).unlink()
    line = json.dumps({"slide_id": slide_id, **_who()}) + "\n"
    fd = os.open(Path(out) / "done.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return path


def read_done_log(out: str | Path) -> list[dict[str, Any]]:
    """The lines of ``OUT/done.log`` (a torn last line, from a kill mid-write, is left out)."""
    path = Path(out) / "done.log"
    entries = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def write_failed(out: str | Path, slide_id: str, slide_path: str, reason: str) -> Path:
    path = record_path(out, slide_id, FAILED)
    atomic_write_json(path, {"slide_id": slide_id, "status": FAILED, "path": slide_path, "reason": reason, **_who()})
    return path


def _who() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def done_state(record: dict[str, Any] | None, inputs: list[dict[str, Any]], digest: str) -> str:
    """``"todo"`` (no record), ``"done"``, ``"inputs-changed"`` or ``"settings-changed"``."""
    if record is None or record.get("status") != DONE:
        return "todo"
    if record.get("settings_hash") != digest:
        return "settings-changed"
    old = [(i.get("path"), i.get("size"), i.get("mtime_ns")) for i in record.get("inputs", [])]
    if old != [(i["path"], i["size"], i["mtime_ns"]) for i in inputs]:
        return "inputs-changed"
    return "done"


def settings_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``key: old -> new`` for the settings that differ (for the refusal message)."""
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def done_records(out: str | Path) -> dict[str, dict[str, Any]]:
    """Every readable done record of ``out`` by slide id."""
    found = {}
    folder = Path(out) / DONE
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            record = json.loads(path.read_text())
            if record.get("status") == DONE:
                found[str(record["slide_id"])] = record
    return found
