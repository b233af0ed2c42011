"""``pretrain_data.json``: a resumed run adds to it, a damaged one is named in one line, overlap by id and file."""

from __future__ import annotations

import pytest

from clusiam_fast.formats.pretrain_record import (
    PretrainOverlapError,
    PretrainRecord,
    check_pretrain_overlap,
    find_pretrain_record,
    read_pretrain_record,
    write_pretrain_record,
)


def test_resume_adds_and_damage_is_named(tmp_path):
    write_pretrain_record(tmp_path, PretrainRecord("manifest", ["a.csv"], ["s1", "s2"], {"s1": "P1"}))
    write_pretrain_record(tmp_path, PretrainRecord("manifest", ["b.csv"], ["s2", "s3"], {"s3": "P3"}))
    record = read_pretrain_record(tmp_path)
    assert record.slide_ids == ["s1", "s2", "s3"] and record.patients == {"s1": "P1", "s3": "P3"}
    assert record.data == ["a.csv", "b.csv"] and record.kind == "manifest"
    (tmp_path / "checkpoint.pt").write_bytes(b"\x80 not json")
    assert find_pretrain_record(None, tmp_path / "checkpoint.pt").slide_ids == record.slide_ids
    assert find_pretrain_record(tmp_path / "nowhere") is None
    (tmp_path / "pretrain_data.json").write_text("{broken")
    with pytest.raises(ValueError, match="is not a readable pre-training record") as error:
        read_pretrain_record(tmp_path)
    assert "\n" not in str(error.value)


def test_overlap_by_slide_patient_and_file(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(image)
    record = PretrainRecord("folder", files=[str(image.resolve())], slide_ids=["s1"], patients={"s1": "P1"})
    with pytest.raises(PretrainOverlapError) as error:
        check_pretrain_overlap(
            record,
            allow=False,
            what="test",
            test_slides=["s9"],
            patients={"s9": "P1"},
            test_files=[tmp_path / "link.jpg"],
        )
    message = str(error.value)
    assert "1 test patient(s) (P1)" in message and "1 test file(s)" in message and "test slide(s)" not in message
    allowed = check_pretrain_overlap(record, allow=True, what="test", test_slides=["s1"])
    assert allowed["allowed"] and allowed["statement"].startswith("WARNING: 1 test slide(s) (s1)")
    many = PretrainRecord("manifest", slide_ids=[f"s{k}" for k in range(9)])
    with pytest.raises(PretrainOverlapError, match=r"9 test slide\(s\) \(s0, s1, s2, s3, s4 and 4 more\)"):
        check_pretrain_overlap(many, allow=False, what="test", test_slides=[f"s{k}" for k in range(9)])
    assert not check_pretrain_overlap(None, allow=False, what="test", test_slides=["s1"])["checked"]
