"""The run's pre-training record (``OUT/pretrain_data.json``, :mod:`clusiam_fast.formats.pretrain_record`):
which slides, patients or image files the run trained on, so that ``extract``, ``evaluate`` and ``study``
can refuse to test on them."""

from __future__ import annotations

from pathlib import Path

from ..formats.manifest import read_manifest
from ..formats.pretrain_record import PretrainRecord, resolved_file, write_pretrain_record
from .loader import DataSource


def pretrain_record(source: DataSource) -> PretrainRecord:
    """The slides (manifest, coordinate files) or image files (folder) of ``source``; patient ids from
    the manifest's optional ``patient_id`` column."""
    data = [str(Path(source.path).resolve())]
    if source.kind == "folder":
        return PretrainRecord("folder", data, files=[resolved_file(f) for f in source.data.files])
    slide_ids = [str(info.slide_id) for info in source.dataset.slides]
    patients: dict[str, str] = {}
    if source.kind == "manifest":
        for row in read_manifest(source.path):
            patient = str(row.get("patient_id") or "").strip()
            if patient:
                patients[str(row["slide_id"])] = patient
    return PretrainRecord(source.kind, data, slide_ids=slide_ids, patients=patients)


def record_pretrain_data(out: Path, source: DataSource) -> Path:
    """Write (or, on resume, extend) ``out/pretrain_data.json``."""
    return write_pretrain_record(out, pretrain_record(source))
