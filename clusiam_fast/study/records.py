"""A study's done records: those of :mod:`clusiam_fast.cohort.records`, one per step or data set.

A step of a method is recorded in ``OUT/runs/<name>/done/<step>.json`` (failures in
``failed/``, an audit line in ``done.log``), a data set in ``OUT/data/done/<set>.json``:
settings (and their sha256 hash), the input files it read (size, mtime, fingerprint), its
outputs (relative to the record's folder) and its result. It is done when the record's
settings and inputs match and its outputs are there.

Studies written before kept a marker with a sha1 hash of the settings
(``runs/<name>/<step>.done.json``, ``data/<set>/.done.json``): read, never written (a
compat read, not a migration), and only where there is no record; a step or set that is done again
loses it first (:func:`forget`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..cohort.records import (
    done_state,
    inputs_stamp,
    outputs_problem,
    read_done,
    record_path,
    settings_hash,
    write_done,
    write_failed,
)

__all__ = ["forget", "inputs_stamp", "is_done", "legacy_hash", "settings_hash", "write_done", "write_failed"]


def legacy_hash(settings: Any) -> str:
    """The sha1 hash that studies wrote before (read only, to recognise their markers)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def is_done(
    out: Path,
    name: str,
    settings: Mapping[str, Any],
    files: Iterable[str | Path] = (),
    legacy: tuple[Path, str, Path] | None = None,
) -> bool:
    """Whether ``name`` (a step or data set) of ``out`` is done with these settings and input ``files``.

    ``legacy``: (old marker, its expected sha1 hash, the output it needs), read only when there is no record."""
    record = read_done(out, name)
    if record is None:
        if legacy is None:
            return False
        marker, expected, output = legacy
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return output.exists() and json.loads(marker.read_text()).get("hash") == expected
        return False
    state = done_state(record, inputs_stamp(files, fingerprints=False), settings)
    return state == "done" and outputs_problem(out, record) is None


def forget(out: Path, name: str, legacy: Path | None = None) -> None:
    """Remove the record (and old marker) of ``name``: it is about to be rebuilt."""
    for path in (record_path(out, name), legacy):
        if path is not None:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                path.unlink()
