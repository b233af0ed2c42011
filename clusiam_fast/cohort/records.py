"""Done records: ``OUT/done/<slide_id>.json``, written atomically once a slide's outputs are complete.

A record holds what decides whether the slide needs doing again: its inputs (path, size,
mtime and a content fingerprint: the first and last MiB), the settings (and their hash), the
outputs (paths relative to OUT) and whatever the step reports (``result``: e.g. the manifest
row), plus who did it (host, pid, time). A slide is done when its record exists, its inputs
are unchanged, its settings match and its outputs are there and open (:func:`outputs_problem`:
an h5 file opens and holds the record's ``num_patches``); a record with other settings is
refused (:class:`SettingsChangedError`) unless ``redo``. Per-slide settings
(``SlideJob.settings``) that a slide did not use are recorded as None and not compared (e.g.
``--slide-mpp`` for a slide whose metadata has its mpp). Records written before fingerprints
are compared on path, size and mtime only. A malformed record is not a done slide: it is
named on the console and the slide done again. Failed slides get
``OUT/failed/<slide_id>.json`` (removed once they succeed).
Records are not fsynced (the outputs a re-run reads are, before their record is written): a machine
crash may lose a record, which costs that slide's redo, never a wrong skip; a half-written one, or an
output left empty (a QA picture, not fsynced), is named and the slide redone.
``OUT/done.log`` gets one line per completed slide (JSON: slide_id, host, pid, time), appended
with a single ``O_APPEND`` write: the audit trail that no slide was done twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
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


FINGERPRINT_BYTES = 1 << 20  # hashed at each end of an input: cheap, and a swapped slide differs there


def fingerprint(path: str | Path, size: int) -> str | None:
    """A 16-hex hash of the size and the first and last MiB of a file (None for a folder or unreadable)."""
    digest = hashlib.sha256(str(size).encode())
    try:
        with open(path, "rb") as f:
            digest.update(f.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                digest.update(f.read(FINGERPRINT_BYTES))
    except OSError:  # a folder (an image folder, the data of an .mrxs) or unreadable
        return None
    return digest.hexdigest()[:16]


def inputs_stamp(paths: Iterable[str | Path], fingerprints: bool = True) -> list[dict[str, Any]]:
    """(path, size, mtime_ns, fingerprint) of each input file; a missing one has size -1. Without
    ``fingerprints`` they are left out (:func:`done_state` reads them only where a record has one)."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            stamps.append({"path": str(path), "size": -1, "mtime_ns": 0, "fingerprint": None})
            continue
        stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        stamps.append({**stamp, "fingerprint": fingerprint(path, st.st_size)} if fingerprints else stamp)
    return stamps


def note(message: str) -> None:
    """Tell the console what was found wrong in OUT and what was done about it."""
    print(f"cohort: {message}", file=sys.stderr, flush=True)


def record_path(out: str | Path, slide_id: str, kind: str = DONE) -> Path:
    return Path(out) / kind / f"{safe_id(slide_id)}.json"


def read_done(out: str | Path, slide_id: str, kind: str = DONE) -> dict[str, Any] | None:
    """The record of ``slide_id`` or None (absent, unreadable or not a record: then the slide is not done)."""
    record, _ = read_record(record_path(out, slide_id, kind))
    return record


def read_record(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None), (None, why it is malformed), or (None, None) when there is none."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, "is a folder"
    except (OSError, ValueError) as error:
        return None, f"is not readable JSON ({error})"
    problem = record_problem(record)
    return (None, problem) if problem else (record, None)


def record_problem(record: Any) -> str | None:
    """Why ``record`` (parsed JSON) is not a well-formed done or failure record, or None."""
    if not isinstance(record, dict):
        return f"holds a JSON {type(record).__name__}, not a record"
    if record.get("status") not in (DONE, FAILED):
        return f"has status {record.get('status')!r}"
    if record["status"] == FAILED:
        return None
    if not isinstance(record.get("settings"), dict):
        return "has no settings"
    inputs, outputs = record.get("inputs"), record.get("outputs", [])
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return "has no list of inputs"
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        return "has no list of outputs"
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
        durable=False,  # its outputs are fsynced; losing it in a crash only redoes the slide
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
    record = {"slide_id": slide_id, "status": FAILED, "path": slide_path, "reason": reason, **_who()}
    atomic_write_json(path, record, durable=False)
    return path


def _who() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def done_state(
    record: dict[str, Any] | None, inputs: list[dict[str, Any]], settings: Mapping[str, Any], per_slide=()
) -> str:
    """``"todo"`` (no record), ``"done"``, ``"inputs-changed"`` or ``"settings-changed"``.

    ``settings``: the slide's own (shared plus per-slide); a per-slide key the record holds as
    None (unused by that slide) is not compared."""
    if record is None or record_problem(record) or record.get("status") != DONE:
        return "todo"
    if settings_hash(comparable(settings, record, per_slide)) != settings_hash(
        comparable(record["settings"], record, per_slide)
    ):
        return "settings-changed"
    if not _same_inputs(record["inputs"], inputs):
        return "inputs-changed"
    return "done"


def comparable(settings: Mapping[str, Any], record: dict[str, Any], per_slide) -> dict[str, Any]:
    """``settings`` less the per-slide keys ``record`` did not use (recorded as None)."""
    unused = {k for k in per_slide if record["settings"].get(k) is None}
    return {k: v for k, v in settings.items() if k not in unused}


def _same_inputs(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> bool:
    """Same paths, sizes and mtimes; and same fingerprints where the record has one (older records do not)."""
    if [(i.get("path"), i.get("size"), i.get("mtime_ns")) for i in old] != [
        (i["path"], i["size"], i["mtime_ns"]) for i in new
    ]:
        return False
    for a, b in zip(old, new):
        if a.get("fingerprint") is not None and "fingerprint" not in b:
            b["fingerprint"] = fingerprint(b["path"], b["size"])  # read only when a record has one to compare
        if a.get("fingerprint") is not None and a["fingerprint"] != b["fingerprint"]:
            return False
    return True


def outputs_problem(out: str | Path, record: dict[str, Any], checks: dict | None = None) -> str | None:
    """Why the outputs of a done record are not usable, or None: each exists; an h5 file opens and its
    ``coords`` (else ``features``) has the record's ``num_patches`` rows, the last one readable.

    ``checks``: verdicts already reached in this run (filled here), by what they depend on (the record's
    count, each output's size and mtime): a run that plans, then rebuilds its manifest, opens each file once."""
    if checks is None:
        return _outputs_problem(out, record)
    key = _outputs_stamp(out, record)
    if key not in checks:
        checks[key] = _outputs_problem(out, record)
    return checks[key]


def _outputs_stamp(out: str | Path, record: dict[str, Any]) -> tuple:
    result = record.get("result")
    count = result.get("num_patches") if isinstance(result, dict) else None
    stamps = []
    for name in record.get("outputs", []):
        try:
            st = os.stat(Path(out) / name)
            stamps.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((name, None, None))
    return str(out), count if isinstance(count, int) else None, tuple(stamps)


def _outputs_problem(out: str | Path, record: dict[str, Any]) -> str | None:
    result = record.get("result")
    count = result.get("num_patches") if isinstance(result, dict) else None
    for name in record.get("outputs", []):
        path = Path(out) / name
        if not path.exists():
            return f"its output {name} is missing"
        if path.suffix != ".h5":
            if path.is_file() and path.stat().st_size == 0:  # a file not fsynced, emptied by a machine crash
                return f"its output {name} is empty"
            continue
        import h5py

        try:
            with h5py.File(path, "r") as f:
                key = "coords" if "coords" in f else "features" if "features" in f else None
                rows = len(f[key]) if key else None
                if rows:
                    f[key][rows - 1]  # the data is there (a truncated file fails here or at the open)
        except (OSError, ValueError, KeyError, TypeError) as error:
            return f"its output {name} does not open ({error})"
        if rows is not None and isinstance(count, int) and rows != count:
            return f"its output {name} holds {rows} patches, the record says {count}"
    return None


def settings_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``key: old -> new`` for the settings that differ (for the refusal message)."""
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def done_records(
    out: str | Path, verify: bool = True, rejected: set[str] | None = None, checks: dict | None = None
) -> dict[str, dict[str, Any]]:
    """Every done record of ``out`` by slide id (for the manifest or index); with ``verify``, those whose
    outputs do not match (:func:`outputs_problem`, reusing ``checks``) and malformed ones are left out,
    named on the console (their slide ids, or file stems, added to ``rejected``)."""
    found = {}
    folder = Path(out) / DONE
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record, problem = read_record(path)
        if record is not None and record["status"] == DONE and verify:
            problem = outputs_problem(out, record, checks)
        if problem and verify:
            note(f"left {path} out of the done slides ({problem}); a re-run does the slide again")
            if rejected is not None:
                rejected.add(str(record["slide_id"]) if record and "slide_id" in record else path.stem)
        elif record is not None and record["status"] == DONE:
            found[str(record.get("slide_id", path.stem))] = record
    return found
