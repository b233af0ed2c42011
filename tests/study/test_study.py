"""``python -m clusiam_fast.study`` on real PCam patches: report, resume after a kill, skipped steps, bad configs.

The study is tiny (48 training patches, crop 32, batch 8, 12 steps; 40 KNN patches and
24 pseudo-bags of 4-5 patches; 3 MIL epochs) and has two methods: CluSiam (K = 10)
and the untrained baseline, so that the whole file stays near two minutes on a loaded
2-core machine. Every step is a real subprocess of the real CLIs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clusiam_fast.study.__main__ import main as study_main

pytestmark = pytest.mark.usefixtures("one_thread")

BUDGET = (
    "{epochs: 2, max_steps: 12, batch_size: 8, crop_size: 32, seed: 0, workers: 0, threads: 1, "
    "log_every: 1, max_stat_images: 48}"
)
EVALUATE = (
    "{models: [maxpool, dsmil], seeds: [0, 1], epochs: 3, warmup_epochs: 1, lrs: [0.01], wds: [0.0001], "
    "batch_size: 8, no_maps: true, cpu_threads: 1}"
)


def _config(
    tmp_path: Path, pcam: Path, methods: str, data: str | None = None, budget: str = BUDGET, evaluate: str = EVALUATE
) -> Path:
    data = data or (
        f"{{train: {pcam / 'train'}, train_sample: 48, class_folders: {pcam / 'valid'}, "
        "knn_per_class: 20, mil_bags: 24, bag_size: [4, 6]}"
    )
    path = tmp_path / "study.yaml"
    path.write_text(
        f"out: out\ndata: {data}\nbudget: {budget}\ntrain_args: [--no-tensorboard]\nmethods: {methods}\n"
        f"extract: {{resize: 32, workers: 0, batch_size: 64}}\nevaluate: {evaluate}\n"
    )
    return path


METHODS = "[{name: clusiam, num_clusters: 10}, {name: random_init, method: random_init}]"


def _markers(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("runs/*/done/*.json"))}


def test_study_resumes_after_a_kill_then_skips_what_is_done(pcam_dir, tmp_path, capsys):
    cfg = _config(tmp_path, pcam_dir, METHODS)
    out = tmp_path / "out"
    # 1. Start the study and kill it (SIGKILL, the whole process group) once the first method has trained.
    first = subprocess.Popen(
        [sys.executable, "-m", "clusiam_fast.study", str(cfg), "--quiet"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker = out / "runs" / "clusiam" / "done" / "train.json"
    deadline = time.time() + 300
    while not marker.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert marker.exists(), first.stderr.read().decode()
    assert not (out / "report.json").exists() and not (out / "runs" / "random_init" / "done" / "train.json").exists()
    trained = marker.stat().st_mtime_ns

    # 2. The same command again: the finished training is skipped, everything else runs.
    assert study_main([str(cfg), "--quiet"]) == 0
    assert "study: 1 step up to date, 5 to run" in capsys.readouterr().err
    assert marker.stat().st_mtime_ns == trained
    rep = json.loads((out / "report.json").read_text())
    status = {(s["name"], s["step"]): s["status"] for s in rep["steps"]}
    assert status.pop(("clusiam", "train")) == "up to date"
    assert set(status.values()) == {"done"} and len(status) == 5

    rows = {r["name"]: r for r in rep["methods"]}
    assert list(rows) == ["clusiam", "random_init"]
    for row in rows.values():
        knn = row["knn"]
        assert knn["n_train"] == knn["n_test"] == 20
        lo, hi = knn["f1_macro_ci95"]
        assert 0 <= lo <= knn["f1_macro"] <= hi <= 1 and hi > lo
        assert set(row["mil"]) == {"maxpool", "dsmil"}
        assert all(0 <= m["auc_macro"] <= 1 and m["seeds"] == 2 for m in row["mil"].values())
        assert "kmeans" in row["clustering"]
    clusiam, baseline = rows["clusiam"], rows["random_init"]
    assert clusiam["clustering"]["assigner"]["k"] == 10 and "assigner" not in baseline["clustering"]
    assert clusiam["trained_steps"] == 12 and baseline["trained_steps"] == 0
    assert {"loss", "inv_loss", "cluster_loss", "projection_std", "backbone_std", "backbone_rankme"} <= set(
        clusiam["monitors"]
    )
    assert clusiam["monitors"]["loss"]["step"] == list(range(1, 13))  # steps.csv, log_every 1
    assert baseline["monitors"] == {}  # nothing trained, nothing logged
    # The same evaluation sets for both: the same test patches and test bags.
    reports = [json.loads(Path(r["report"]).read_text()) for r in rows.values()]
    assert reports[0]["mil"]["test_slide_ids"] == reports[1]["mil"]["test_slide_ids"]
    assert len(reports[0]["mil"]["test_slide_ids"]) == 6
    md = (out / "report.md").read_text()
    assert "| clusiam | clusiam | 12 |" in md and "| random_init | random_init | 0 |" in md
    assert "Did training learn anything?" in md and "![study](study.png)" in md
    assert (out / "study.png").stat().st_size > 20_000
    # The field's columns and the paired comparison against the untrained baseline, on the same test bags.
    for row in rows.values():
        assert {"MIL maxpool", "MIL dsmil", "linear probe (slides)", "linear probe (patches)"} <= set(row["field"])
        probe = row["field"]["linear probe (slides)"]
        lo, hi = probe["balanced_accuracy_ci95"]
        assert lo <= probe["balanced_accuracy"] <= hi and 0 <= probe["auc_ovr_macro"] <= 1
        assert "_predictions" not in row
    paired = {(p["method"], p["task"]): p for p in rep["paired"]}
    assert set(paired) == {("clusiam", t) for t in ("MIL maxpool", "MIL dsmil", "linear probe (slides)")}
    for p in paired.values():
        assert p["reference"] == "random_init" and p["auc"]["unit"] == "slide" and p["auc"]["n_units"] == 6
        assert p["auc"]["low"] <= p["auc"]["difference"] <= p["auc"]["high"]
    assert "## Paired comparisons" in md and "| clusiam | random_init | MIL dsmil |" in md
    assert "As the field's benchmarks report it" in md

    # 3. Once more: every step is up to date, nothing reruns, the report is rebuilt.
    before = _markers(out)
    assert len(before) == 6
    assert study_main([str(cfg), "--quiet"]) == 0
    assert "study: 6 steps up to date, 0 to run" in capsys.readouterr().err
    assert _markers(out) == before
    again = json.loads((out / "report.json").read_text())
    assert {s["status"] for s in again["steps"]} == {"up to date"}
    assert again["methods"][0]["knn"] == rows["clusiam"]["knn"]
    assert study_main([str(cfg), "--report-only", "--quiet"]) == 0 and _markers(out) == before


def test_a_killed_training_resumes_and_changed_settings_start_over(pcam_dir, tmp_path):
    from clusiam_fast.study import load_config
    from clusiam_fast.study.runner import Study

    cfg = load_config(_config(tmp_path, pcam_dir, METHODS))
    study = Study(cfg, progress=False)
    train = study.steps_of(cfg.methods[0], study.prepare_data())[0]
    assert "--overwrite" in study._command(train)
    train.folder.mkdir(parents=True)
    (train.folder / "checkpoint.pt").write_bytes(b"")
    (train.folder.parent / "train.started.json").write_text(json.dumps({"hash": train.hash}))
    assert "--resume" in study._command(train)  # same settings: continue the run exactly
    (train.folder.parent / "train.started.json").write_text(json.dumps({"hash": "another"}))
    assert "--overwrite" in study._command(train)
    old = _sha1({"kind": "train", "argv": train.argv, "inputs": train.settings["inputs"]})  # an older study's
    (train.folder.parent / "train.started.json").write_text(json.dumps({"hash": old}))
    assert "--resume" in study._command(train)
    # The evaluation sets were built once, disjoint: no patch both in the KNN set and in a bag.
    links = [p.resolve() for p in (cfg.out / "data" / "eval").rglob("*.jpg")]
    assert len(links) == len(set(links)) and len(list((cfg.out / "data" / "eval" / "knn").rglob("*.jpg"))) == 40
    # A pseudo-bag is positive exactly when it holds a tumour patch (PCam class 1).
    import csv

    with open(cfg.out / "data" / "slides.csv", newline="") as f:
        bags = list(csv.DictReader(f))
    assert len(bags) == 24 and sum(b["split"] == "test" for b in bags) == 6
    for bag in bags:
        classes = {p.resolve().parent.name for p in (cfg.out / "data" / "eval" / bag["slide_id"]).iterdir()}
        assert ("1" in classes) == (bag["label"] == "positive"), bag


def _sha1(settings) -> str:
    """The settings hash that studies wrote before (sha1 of the sorted JSON, 16 hex)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_a_study_folder_written_before_is_recognised_as_done(pcam_dir, tmp_path, capsys):
    """Older studies marked a step with runs/<name>/<step>.done.json and a set with data/<set>/.done.json,
    holding a sha1 hash of the settings (a step's settings hold the hashes of the steps before it)."""
    from clusiam_fast.cohort.records import inputs_stamp, write_done
    from clusiam_fast.study import load_config
    from clusiam_fast.study.runner import Study, up_to_date

    cfg = load_config(_config(tmp_path, pcam_dir, METHODS))
    study = Study(cfg, progress=False)
    data = study.prepare_data()
    # The data sets as an older study left them: its markers inside the folders, no done records.
    shutil.rmtree(cfg.out / "data" / "done")
    (cfg.out / "data" / "done.log").unlink()
    train_set = {"root": str(pcam_dir / "train"), "n": 48, "seed": 0}
    eval_set = {"root": str(pcam_dir / "valid"), "classes": ["0", "1"], "knn": 20, "bags": 24, "size": [4, 6]}
    eval_set.update(positive="1", seed=0)
    for folder, settings in (("train", train_set), ("eval", eval_set)):
        (cfg.out / "data" / folder / ".done.json").write_text(json.dumps({"hash": _sha1(settings), **settings}))
    link = next((cfg.out / "data" / "eval" / "knn" / "0").iterdir())
    built = link.lstat().st_ino
    assert study.prepare_data() == data and link.lstat().st_ino == built  # not built again
    # Every step done by the older study, each marked with its sha1 chain.
    for run in cfg.methods:
        old: dict[str, str] = {}
        for step, before in zip(study.steps_of(run, data), (None, "train", "extract")):
            inputs = {**step.settings["inputs"], **({before: old[before]} if before else {})}
            old[step.kind] = _sha1({"kind": step.kind, "argv": step.argv, "inputs": inputs})
            step.output.parent.mkdir(parents=True, exist_ok=True)
            step.output.write_bytes(b"written")  # not empty: an emptied output sends its step back
            (step.folder.parent / f"{step.kind}.done.json").write_text(json.dumps({"hash": old[step.kind]}))
    capsys.readouterr()
    assert {r["status"] for r in study.run()} == {"up to date"}
    assert "study: 6 steps up to date, 0 to run" in capsys.readouterr().err
    # A marker of other settings is not done: that step and the ones after it run.
    (cfg.out / "runs" / "random_init" / "extract.done.json").write_text(json.dumps({"hash": "0" * 16}))
    assert [up_to_date(study.steps_of(run, data)) for run in cfg.methods] == [3, 1]
    # A done record (as a step writes it) goes before the marker, and holds the file the step read.
    extract = study.steps_of(cfg.methods[0], data)[1]
    write_done(extract.records, "extract", inputs_stamp(extract.files), extract.settings, {}, ["features/index.csv"])
    assert up_to_date(study.steps_of(cfg.methods[0], data)) == 3
    extract.reads.write_bytes(b"weights trained again")
    assert up_to_date(study.steps_of(cfg.methods[0], data)) == 1


@pytest.mark.parametrize(
    "methods,data,budget,key",
    [
        ("[{name: clusiam}, {name: simclr}]", None, BUDGET, "methods[1].name: unknown method 'simclr'"),
        ("[{name: a, method: swav}]", None, BUDGET, "methods[0].method: unknown method 'swav'"),
        ("[{name: a, method: clusiam, max_steps: 99}]", None, BUDGET, "methods[0].max_steps: is part of the shared"),
        ("[{name: a, method: clusiam, args: [--seed, '3']}]", None, BUDGET, "methods[0].args: --seed is part of"),
        ("[{name: a, method: clusiam, num_clustrs: 9}]", None, BUDGET, "methods[0].num_clustrs: unknown flag"),
        ("[{name: simsiam, alpha: 0.5}]", None, BUDGET, "methods[0] (simsiam): train flags rejected: --alpha"),
        (METHODS, "{train: /no/such/pcam, class_folders: /no/such/valid}", BUDGET, "data.train: /no/such/pcam"),
        (METHODS, "{train: TRAIN, class_folders: /no/such/valid}", BUDGET, "data.class_folders: folder /no/such"),
        (METHODS, None, "{batch_size: 8}", "budget: must give epochs and/or max_steps"),
        (METHODS, None, "{max_steps: -3}", "budget.max_steps: must be an integer >= 1"),
        (METHODS, None, "{max_steps: 3, batch_size: 1}", "budget.batch_size: must be an integer >= 2"),
    ],
    ids=[
        "unknown-name",
        "unknown-method",
        "budget-per-method",
        "budget-in-args",
        "unknown-flag",
        "bad-flag-value",
        "missing-train",
        "missing-eval",
        "no-budget",
        "negative-steps",
        "batch-1",
    ],
)
def test_bad_configs_fail_before_any_training_naming_the_key(pcam_dir, tmp_path, capsys, methods, data, budget, key):
    if data:
        data = data.replace("TRAIN", str(pcam_dir / "train"))
    cfg = _config(tmp_path, pcam_dir, methods, data, budget)
    assert study_main([str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert key in err and str(cfg) in err, err
    if "unknown method" in key:
        assert "clusiam, simsiam, clubyol, byol, random_init" in err
    assert not (tmp_path / "out").exists()  # nothing made, nothing trained


BASELINE = "[{name: random_init, method: random_init}]"


def test_training_images_in_the_evaluation_sets_are_refused_before_training(pcam_dir, tmp_path, capsys):
    """The leakage guard, in the study: training on the folder the evaluation sets are drawn from."""
    data = (
        f"{{train: {pcam_dir / 'valid'}, class_folders: {pcam_dir / 'valid'}, "
        "knn_per_class: 20, mil_bags: 24, bag_size: [4, 6]}"
    )
    cfg = _config(tmp_path, pcam_dir, BASELINE, data=data)
    assert study_main([str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "test file(s)" in err and "of the evaluation sets are in the training data" in err
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained


def test_evaluate_settings_are_checked_against_the_labels_before_any_step(pcam_dir, tmp_path, capsys):
    """folds: 99 on 12 + 12 pseudo-bags: refused before training, with evaluate's own check and words."""
    cfg = _config(tmp_path, pcam_dir, BASELINE, evaluate=EVALUATE[:-1] + ", folds: 99}")
    assert study_main([str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: evaluate: " in err and "slide classification with --folds 99 is not possible" in err
    assert "class 'negative' has 12" in err and "use --folds 12" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "runs").exists()  # nothing trained or extracted
    # A value evaluate itself refuses is a config error at once, before the data are built.
    (tmp_path / "v").mkdir()
    cfg = _config(tmp_path / "v", pcam_dir, BASELINE, evaluate="{epochs: 3, warmup_epochs: 9}")
    assert study_main([str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: evaluate: need epochs >= 1 and 0 <= warmup_epochs <= epochs" in err
    assert not (tmp_path / "v" / "out").exists()


def test_extract_failing_on_every_slide_fails_the_extract_step_by_name(pcam_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    for slide in ("a", "b"):
        (broken / slide).mkdir(parents=True)
        (broken / slide / "0.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "patches.csv").write_text("path,label\na/0.jpg,0\nb/0.jpg,1\n")
    data = (
        f"{{train: {pcam_dir / 'train'}, train_sample: 48, eval: {broken}, patch_labels: {tmp_path / 'patches.csv'}}}"
    )
    cfg = _config(tmp_path, pcam_dir, BASELINE, data=data)
    assert study_main([str(cfg), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "random_init: extract failed" in err and "extract made no feature bag: 2 slides failed (a: " in err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert steps["train"]["status"] == "done" and steps["extract"]["status"] == "failed"
    assert steps["evaluate"]["status"] == "not run (an earlier step failed)"
    assert "extract made no feature bag" in steps["extract"]["error"]
    assert not (tmp_path / "out" / "runs" / "random_init" / "done" / "extract.json").exists()
    assert (tmp_path / "out" / "runs" / "random_init" / "failed" / "extract.json").is_file()
    md = (tmp_path / "out" / "report.md").read_text()
    assert "random_init: extract failed" in md and "evaluate failed" not in md


def test_knn_bootstrap_interval_is_the_percentiles_of_sklearn_f1_on_resamples():
    from sklearn.metrics import f1_score

    from clusiam_fast.evaluation.knn import bootstrap_f1_accuracy

    rng = np.random.default_rng(3)
    y_true = rng.choice(["a", "b", "c"], size=60)
    y_pred = np.where(rng.random(60) < 0.7, y_true, rng.choice(["a", "b", "c"], size=60))
    got = bootstrap_f1_accuracy(y_true, y_pred, resamples=200, seed=5)
    idx = np.random.default_rng(5).integers(0, 60, size=(200, 60))
    f1 = [f1_score(y_true[i], y_pred[i], average="macro") for i in idx]
    acc = [(y_true[i] == y_pred[i]).mean() for i in idx]
    assert got["f1_macro_ci95"] == pytest.approx(np.percentile(f1, [2.5, 97.5]))
    assert got["accuracy_ci95"] == pytest.approx(np.percentile(acc, [2.5, 97.5]))


def test_the_config_is_checked_without_importing_torch(pcam_dir, tmp_path):
    bad = _config(tmp_path, pcam_dir, "[{name: clusiam}, {name: simclr}]")
    code = (
        "import sys\n"
        "from clusiam_fast.study.__main__ import main\n"
        "from clusiam_fast.study.config import load_config\n"
        "status = main([sys.argv[1], '--quiet'])\n"
        "torch_after_error = 'torch' in sys.modules\n"
        "good = sys.argv[2]\n"
        "open(good, 'w').write(open(sys.argv[1]).read().replace('{name: simclr}', '{name: simsiam}'))\n"
        "load_config(good)\n"
        "print(status, torch_after_error, 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(bad), str(tmp_path / "good.yaml")], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.split() == ["2", "False", "False"], done.stderr[-2000:]
    assert "methods[1].name: unknown method 'simclr'" in done.stderr
