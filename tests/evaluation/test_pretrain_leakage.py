"""The leakage guard: test slides, patients or files seen in self-supervised training are refused.

A real chain on the CMU slide: eight copies tiled, a CluSiam run trained on four of them
(a manifest with a patient_id column), features of all eight extracted with its checkpoint,
then ``evaluate`` (and ``extract --labels``) against slides.csv files whose test split or
patients touch the training slides. A second chain trains on a folder of PCam patches.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from clusiam_fast.evaluate import main as evaluate_main
from clusiam_fast.extract import main as extract_main
from clusiam_fast.formats.pretrain_record import read_pretrain_record

TINY_MIL = ["--models", "maxpool", "--epochs", "1", "--warmup-epochs", "0", "--seeds", "0", "--no-maps", "--quiet"]
TINY_MIL += ["--lrs", "1e-3", "--wds", "1e-4", "--val-fraction", "0.34"]


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def cohort_run(wsi_dir, tmp_path_factory) -> dict:
    """Eight CMU copies tiled; a run trained on slide_00..03 (patients P0..P3); features of all eight."""
    pytest.importorskip("clusiam_fast.tile", reason="the slide tiler is not installed")
    from cohort_slides import make_cohort
    from train_cases import small_config

    from clusiam_fast.tile import main as tile_main
    from clusiam_fast.training import train

    root = tmp_path_factory.mktemp("leak")
    slides = make_cohort(wsi_dir, root / "slides", good=8)
    assert tile_main([*map(str, slides), "--out", str(root / "tiles"), "--workers", "1"]) == 0
    with open(root / "tiles" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    trained = [{**r, "patient_id": f"P{r['slide_id'][-1]}"} for r in rows if r["slide_id"] < "slide_04"]
    _write_csv(root / "tiles" / "train_manifest.csv", trained)
    assert train(small_config(root / "tiles" / "train_manifest.csv", root / "run", max_steps=1)).step == 1
    feats = root / "feats"
    flags = ["--out", str(feats), "--resize", "32", "--workers", "0", "--quiet"]
    assert extract_main([str(root / "run" / "checkpoint.pt"), str(root / "tiles" / "manifest.csv"), *flags]) == 0
    return {"root": root, "run": root / "run", "feats": feats, "manifest": root / "tiles" / "manifest.csv"}


def _slides_csv(path: Path, test: set[str], patients: dict[str, str] | None = None) -> Path:
    rows = []
    for k in range(8):
        sid = f"slide_{k:02d}"
        row = {"slide_id": sid, "label": "ab"[k % 2], "split": "test" if sid in test else "train"}
        if patients is not None:
            row["patient_id"] = patients.get(sid, f"Q{k}")
        rows.append(row)
    return _write_csv(path, rows)


def test_train_records_its_slides_and_extract_copies_the_record(cohort_run):
    record = read_pretrain_record(cohort_run["run"])
    assert record.kind == "manifest" and record.slide_ids == ["slide_00", "slide_01", "slide_02", "slide_03"]
    assert record.patients == {f"slide_0{k}": f"P{k}" for k in range(4)}
    assert read_pretrain_record(cohort_run["feats"]).slide_ids == record.slide_ids


def test_a_test_slide_seen_in_pretraining_is_refused(cohort_run, tmp_path, capsys):
    labels = _slides_csv(tmp_path / "slides.csv", {"slide_03", "slide_06"})
    argv = [str(cohort_run["feats"]), "--labels", str(labels), "--out", str(tmp_path / "report"), *TINY_MIL]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "1 test slide(s) (slide_03)" in err and "--allow-pretrain-overlap" in err
    assert not (tmp_path / "report" / "report.json").exists()
    assert evaluate_main([*argv, "--allow-pretrain-overlap"]) == 0
    first = (tmp_path / "report" / "report.md").read_text().splitlines()[0]
    assert first.startswith("**WARNING: 1 test slide(s) (slide_03)") and "--allow-pretrain-overlap" in first
    res = json.loads((tmp_path / "report" / "report.json").read_text())
    assert res["pretrain_overlap"]["overlap"]["slides"] == ["slide_03"] and res["pretrain_overlap"]["allowed"]


def test_a_test_patient_seen_in_pretraining_is_refused(cohort_run, tmp_path, capsys):
    # slide_07 is new, but its patient P1 gave slide_01 to the training set
    labels = _slides_csv(tmp_path / "slides.csv", {"slide_06", "slide_07"}, {"slide_01": "P1", "slide_07": "P1"})
    argv = [str(cohort_run["feats"]), "--labels", str(labels), "--out", str(tmp_path / "report"), *TINY_MIL]
    assert evaluate_main(argv) == 2
    err = capsys.readouterr().err
    assert "1 test patient(s) (P1)" in err and "test slide(s)" not in err
    clean = _slides_csv(tmp_path / "clean.csv", {"slide_06", "slide_07"}, {})
    assert (
        evaluate_main([str(cohort_run["feats"]), "--labels", str(clean), "--out", str(tmp_path / "ok"), *TINY_MIL]) == 0
    )
    res = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert res["pretrain_overlap"]["checked"] and not any(res["pretrain_overlap"]["overlap"].values())
    assert "no test data was seen in self-supervised training" in (tmp_path / "ok" / "report.md").read_text()


def test_extract_with_labels_refuses_before_extracting(cohort_run, tmp_path, capsys):
    labels = _slides_csv(tmp_path / "slides.csv", {"slide_02"})
    out = tmp_path / "feats"
    argv = [str(cohort_run["run"] / "checkpoint.pt"), str(cohort_run["manifest"]), "--out", str(out), "--quiet"]
    assert extract_main([*argv, "--labels", str(labels)]) == 2
    assert "1 test slide(s) (slide_02)" in capsys.readouterr().err and not out.exists()


def test_test_patches_of_the_training_folder_are_refused(patches, tmp_path, capsys):
    """Images in folders count by file: a test patch that the run trained on (through a link) is named."""
    from train_cases import small_config

    from clusiam_fast.training import train

    assert train(small_config(patches, tmp_path / "run", max_steps=1)).step == 1
    record = read_pretrain_record(tmp_path / "run")
    assert record.kind == "folder" and len(record.files) == 48
    assert all(Path(f).resolve() == Path(f) and "pcam" in f for f in record.files)  # links resolved
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    images = sorted(patches.iterdir())
    for image in images[:4] + images[-4:]:  # 4 of each class
        (eval_dir / image.name).symlink_to(image.resolve())
    flags = ["--resize", "32", "--workers", "0", "--quiet"]
    assert (
        extract_main([str(tmp_path / "run" / "checkpoint.pt"), str(eval_dir), "--out", str(tmp_path / "f"), *flags])
        == 0
    )
    rows = [
        {"path": p.name, "label": p.name[0], "split": "test" if k % 2 else "train"}
        for k, p in enumerate(sorted(eval_dir.iterdir()))
    ]
    labels = _write_csv(tmp_path / "patches.csv", rows)
    argv = [str(tmp_path / "f"), "--patch-labels", str(labels), "--out", str(tmp_path / "r"), "--no-maps", "--quiet"]
    assert evaluate_main(argv) == 2
    assert "4 test file(s)" in capsys.readouterr().err
