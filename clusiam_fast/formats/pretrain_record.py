"""``pretrain_data.json``: what a self-supervised run trained on, and the guard against testing on it.

``train`` writes the record into its run folder (``OUT/pretrain_data.json``); ``extract``
copies it beside the feature bags, so ``evaluate`` and ``study`` find it with the features.
It holds the slide ids (tiler manifest or CLAM/TRIDENT coordinate files), their patient ids
when the manifest has a ``patient_id`` column, and for a folder of images every image file
(resolved path: a link counts as the file it points to). A resumed run adds to it.

The guard (:func:`check_pretrain_overlap`) refuses an evaluation whose test slides, test
patients or test image files were seen in self-supervised training: patches of the test
slides in the SSL set inflate every downstream number (PCam and Camelyon16 splits come from
the same slides; DSMIL issue #41, CluSiam issue #6). ``--allow-pretrain-overlap`` turns the
refusal into a statement that the report prints in its first line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.atomic import atomic_write_json

RECORD = "pretrain_data.json"
SHOWN = 5  # ids named in a message


@dataclass
class PretrainRecord:
    """The data one run trained on (see the module docstring); ``path``: the file it was read from."""

    kind: str
    data: list[str] = field(default_factory=list)
    slide_ids: list[str] = field(default_factory=list)
    patients: dict[str, str] = field(default_factory=dict)  # slide_id -> patient_id
    files: list[str] = field(default_factory=list)
    path: Path | None = None

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "data": self.data,
            "slide_ids": self.slide_ids,
            "patients": self.patients,
            "files": self.files,
        }


def write_pretrain_record(run_dir: str | Path, record: PretrainRecord) -> Path:
    """Write ``run_dir/pretrain_data.json``, merged with the one already there (a resumed run adds data)."""
    path = Path(run_dir) / RECORD
    old = read_pretrain_record(path)
    if old is not None:
        record = PretrainRecord(
            kind=record.kind if old.kind == record.kind else "mixed",
            data=list(dict.fromkeys(old.data + record.data)),
            slide_ids=list(dict.fromkeys(old.slide_ids + record.slide_ids)),
            patients={**old.patients, **record.patients},
            files=list(dict.fromkeys(old.files + record.files)),
        )
    atomic_write_json(path, record.to_json())
    return path


def copy_pretrain_record(record: PretrainRecord, folder: str | Path) -> Path:
    """Write ``record`` into ``folder`` (as ``extract`` does beside the bags), replacing one there."""
    path = Path(folder) / RECORD
    atomic_write_json(path, record.to_json())
    return path


def read_pretrain_record(path: str | Path) -> PretrainRecord | None:
    """The record at ``path`` (a file, or a folder holding one); None when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / RECORD
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return PretrainRecord(
            kind=str(raw["kind"]),
            data=[str(d) for d in raw.get("data", [])],
            slide_ids=[str(s) for s in raw.get("slide_ids", [])],
            patients={str(k): str(v) for k, v in raw.get("patients", {}).items()},
            files=[str(f) for f in raw.get("files", [])],
            path=path,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable pre-training record ({error}); delete it or train again") from None


def find_pretrain_record(*places: str | Path | None) -> PretrainRecord | None:
    """The first record found in ``places`` (folders, or a checkpoint whose folder holds one)."""
    for place in places:
        if not place:
            continue
        place = Path(place)
        if not place.exists():
            continue
        record = read_pretrain_record(place if place.is_dir() or place.name == RECORD else place.parent)
        if record is not None:
            return record
    return None


def resolved_file(path: str | Path) -> str:
    """How a file is named in a record: its resolved absolute path."""
    return str(Path(path).resolve())


@dataclass
class Overlap:
    """Test slides, patients and image files that were seen in pre-training."""

    slides: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.slides or self.patients or self.files)

    def describe(self) -> str:
        parts = []
        for what, ids in (
            ("test slide(s)", self.slides),
            ("test patient(s)", self.patients),
            ("test file(s)", self.files),
        ):
            if ids:
                more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
                parts.append(f"{len(ids)} {what} ({', '.join(ids[:SHOWN])}{more})")
        return " and ".join(parts)


def find_overlap(
    record: PretrainRecord,
    test_slides: Iterable[str] = (),
    patients: Mapping[str, str] | None = None,
    test_files: Iterable[str | Path] = (),
) -> Overlap:
    """What of the test set the run trained on. ``patients`` maps slide ids to patient ids (slides.csv's
    ``patient_id``; it may list training slides too): a test patient overlaps when any slide of theirs was
    trained on, by the record's or by ``patients``' mapping."""
    test_slides = list(dict.fromkeys(str(s) for s in test_slides))
    seen = set(record.slide_ids)
    patients = dict(patients or {})
    trained_patients = set(record.patients.values()) | {patients[s] for s in seen if s in patients}
    test_patients = dict.fromkeys(patients.get(s) or record.patients.get(s) for s in test_slides)
    overlap_patients = sorted(p for p in test_patients if p is not None and p in trained_patients)
    seen_files = set(record.files)
    files = sorted({resolved_file(f) for f in test_files} & seen_files) if seen_files else []
    return Overlap(slides=sorted(s for s in test_slides if s in seen), patients=overlap_patients, files=files)


class PretrainOverlapError(ValueError):
    """The test set was seen in self-supervised training (and ``--allow-pretrain-overlap`` was not given)."""


def check_pretrain_overlap(
    record: PretrainRecord | None,
    *,
    allow: bool,
    what: str,
    test_slides: Iterable[str] = (),
    patients: Mapping[str, str] | None = None,
    test_files: Iterable[str | Path] = (),
) -> dict:
    """Refuse (PretrainOverlapError, one line) when the test set overlaps the record, unless ``allow``.

    Returns what the report states: ``{"checked", "record", "overlap", "allowed", "statement"}``."""
    if record is None:
        return {
            "checked": False,
            "statement": "no pre-training record (pretrain_data.json) beside the checkpoint or the features: "
            "test data not checked against the self-supervised training set",
        }
    overlap = find_overlap(record, test_slides, patients, test_files)
    result = {
        "checked": True,
        "record": str(record.path),
        "overlap": {"slides": overlap.slides, "patients": overlap.patients, "files": overlap.files},
        "allowed": bool(allow and overlap),
    }
    if not overlap:
        result["statement"] = f"no {what} data was seen in self-supervised training ({record.path})"
        return result
    found = f"{overlap.describe()} of the {what} set were seen in self-supervised training ({record.path})"
    if not allow:
        raise PretrainOverlapError(
            f"{found}: the evaluation would be inflated; test on slides and patients the run never saw, "
            "or pass --allow-pretrain-overlap to report it anyway"
        )
    result["statement"] = f"WARNING: {found}; evaluated anyway (--allow-pretrain-overlap)"
    return result
