"""MIL splits (k-fold, by patient), the cross-validated protocol and the bootstrap CI of test AUC.

The guarantees: folds are disjoint, stratified and test every slide exactly once; a
patient's slides never sit on two sides of a split (test/train, nor validation/train);
each fold's model selection cannot reach that fold's test slides (checked bit for bit by
replacing them with garbage); bad patient tables and impossible --folds are errors that
say what is wrong and what to do.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from clusiam_fast.evaluation.bootstrap import bootstrap_auc, weighted_auc
from clusiam_fast.evaluation.mil import (
    BagDataset,
    MILConfig,
    check_patients,
    holdout_split,
    kfold_splits,
    run_cross_validation,
    select_model,
    stratified_split,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cohort(n_patients: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labels, patient ids and slide ids: patients with 1-3 slides, 1/3 of them positive."""
    rng = np.random.default_rng(seed)
    labels, groups, slides = [], [], []
    for p in range(n_patients):
        for s in range(int(rng.integers(1, 4))):
            labels.append(int(p % 3 == 0)), groups.append(f"P{p:02d}"), slides.append(f"P{p:02d}_s{s}")
    return np.array(labels), np.array(groups), slides


def _key_bags(n: int, seed: int, dim: int = 16, key_shift: float = 4.0, with_keys: bool = False):
    """Bags of 6-11 non-negative instances; a positive bag holds 1-2 key instances shifted along feature 0."""
    rng = np.random.default_rng(seed)
    bags, labels, keys = [], [], []
    for i in range(n):
        size = int(rng.integers(6, 12))
        x = np.abs(rng.normal(size=(size, dim))).astype(np.float32)
        is_key = np.zeros(size, bool)
        if i % 2:
            is_key[rng.choice(size, int(rng.integers(1, 3)), replace=False)] = True
            x[is_key, 0] += key_shift
        bags.append(x), labels.append(i % 2), keys.append(is_key)
    return (bags, labels, keys) if with_keys else (bags, labels)


# ---------------------------------------------------------------- splits


@pytest.mark.parametrize("grouped", [False, True])
def test_kfold_disjoint_complete_stratified_seeded_and_by_patient(grouped):
    y, g, _ = _cohort()
    groups = g if grouped else None
    folds = kfold_splits(y, 5, seed=1, groups=groups)
    assert len(folds) == 5
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests) == list(range(len(y)))  # every slide is a test slide exactly once
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == len(y)
        share = y[test].mean()
        assert abs(share - y.mean()) < (0.2 if grouped else 0.1)  # stratified: each fold near the cohort's share
        assert set(y[test]) == {0, 1}
        if grouped:
            assert not set(g[train]) & set(g[test])  # a patient never on both sides
    again = kfold_splits(y, 5, seed=1, groups=groups)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = kfold_splits(y, 5, seed=2, groups=groups)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_holdout_by_patient_and_the_paper_split_unchanged():
    y, g, _ = _cohort(40)
    keep, held = holdout_split(y, 0.25, seed=3, groups=g)
    assert sorted(np.r_[keep, held]) == list(range(len(y))) and not set(g[keep]) & set(g[held])
    for c in (0, 1):  # a quarter of each class's patients is held out
        patients = set(g[y == c])
        assert len(set(g[held][y[held] == c])) == round(0.25 * len(patients))
    # Without patients the split is the paper's (scikit-learn's stratified train_test_split), unchanged.
    a, b = holdout_split(y, 0.25, seed=3)
    ref = stratified_split(y, 0.25, seed=3)
    assert np.array_equal(a, ref[0]) and np.array_equal(b, ref[1])


def test_validation_split_of_model_selection_is_by_patient():
    bags, labels = _key_bags(60, seed=0)
    groups = [f"P{i // 3}" for i in range(60)]
    labels = [int((i // 3) % 2) for i in range(60)]  # one class per patient
    ds = BagDataset.from_arrays(bags, labels, [f"s{i}" for i in range(60)], ["neg", "pos"], groups=groups)
    cfg = MILConfig(lrs=(1e-2,), weight_decays=(1e-4,), epochs=1, warmup_epochs=0, seeds=(0,), progress=False)
    sel = select_model("maxpool", ds, cfg, seed=0)
    patient = dict(zip(ds.slide_ids, groups))
    val_p, train_p = {patient[s] for s in sel.val_slides}, {patient[s] for s in sel.train_slides}
    assert val_p and not val_p & train_p and len(sel.val_slides) + len(sel.train_slides) == 60


def test_a_patient_in_two_classes_is_named_with_its_slides():
    y, g, slides = _cohort()
    check_patients(y, g, slides, ["normal", "tumour"])  # a clean table passes
    y = y.copy()
    name = str(next(p for p in sorted(set(g)) if (g == p).sum() >= 2))
    first_two = np.flatnonzero(g == name)
    y[first_two[0]] = 1 - y[first_two[0]]
    with pytest.raises(ValueError) as err:
        check_patients(y, g, slides, ["normal", "tumour"])
    msg = str(err.value)
    assert f"patient {name!r}" in msg and slides[first_two[0]] in msg and slides[first_two[1]] in msg
    assert (
        f"normal: {slides[first_two[0]]}" in msg and "tumour: " in msg and "correct the label or the patient_id" in msg
    )


def test_more_folds_than_the_smallest_class_is_a_clear_error():
    y = np.array([0] * 12 + [1] * 4)
    with pytest.raises(ValueError, match=r"--folds 5 needs at least 5 slides in every class, but class 'tumour' has 4"):
        kfold_splits(y, 5, seed=0, classes=["normal", "tumour"])
    kfold_splits(y, 4, seed=0)  # 4 is fine
    # With patients, patients are counted: 4 tumour slides but only 2 tumour patients.
    g = np.array([f"N{i}" for i in range(12)] + ["T0", "T0", "T1", "T1"])
    with pytest.raises(ValueError, match=r"at least 3 patients in every class, but class 'tumour' has 2.*--folds 2"):
        kfold_splits(y, 3, seed=0, groups=g, classes=["normal", "tumour"])
    with pytest.raises(ValueError, match="--folds must be at least 2"):
        kfold_splits(y, 1, seed=0)


def test_plan_names_what_a_split_column_and_patients_allow():
    from clusiam_fast.evaluation.mil.plan import plan_splits

    classes = ["normal", "tumour"]
    y = [0] * 4 + [1] * 4
    with pytest.raises(ValueError) as info:
        plan_splits(y, classes, split_column=["train"] * 8, source="slides.csv")
    msg = str(info.value)
    assert msg.startswith("slides.csv: slide classification on one train/test split is not possible")
    assert "the split column marks no labelled slide 'test'" in msg and "allow --folds 3 to 4" in msg
    assert "change the split column" in msg and "drop the split column" in msg
    patients = ["P0", "P0", "P1", "P1", "Q0", "Q1", "Q2", "Q3"]  # 2 normal patients, 4 tumour patients
    with pytest.raises(ValueError, match=r"Patients per class: normal 2, tumour 4.*1 more patient of class 'normal'"):
        plan_splits(y, classes, groups=patients)
    more = patients + ["P2", "P3"]  # 4 normal patients: the split (by patient) can be made
    ((train, test),) = plan_splits(y + [0, 0], classes, groups=more, seed=1)
    assert len(test) and not {more[i] for i in train} & {more[i] for i in test}


# ---------------------------------------------------------------- bootstrap CI


def test_weighted_auc_is_sklearns_auc_on_the_resampled_slides():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50).astype(bool)
    scores = np.round(rng.random(50), 1)  # many ties
    weights = rng.integers(0, 4, size=(20, 50)).astype(float)
    got = weighted_auc(scores, y, weights)
    for w, a in zip(weights, got):
        idx = np.repeat(np.arange(50), w.astype(int))
        assert a == pytest.approx(roc_auc_score(y[idx], scores[idx]))


def test_ci_contains_the_estimate_narrows_with_more_slides_and_is_seeded():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)

    def scored(n):
        y = np.arange(n) % 2
        p = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=n))))
        return y, np.c_[1 - p, p]

    widths = []
    for n in (40, 160, 640):
        y, probs = scored(n)
        ci = bootstrap_auc(y, probs, n_boot=1000, seed=0)
        assert ci["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
        assert ci["low"] < ci["auc"] < ci["high"] and ci["unit"] == "slide" and ci["n_boot"] == 1000
        widths.append(ci["high"] - ci["low"])
        assert bootstrap_auc(y, probs, seed=0) == ci  # seeded
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] / widths[2] > 2.5  # ~ sqrt(16) = 4 in theory
    # Several seeds' predictions: the CI of their mean AUC.
    y, probs = scored(80)
    _, other = scored(80)
    two = bootstrap_auc(y, [probs, other])
    assert two["auc"] == pytest.approx(np.mean([roc_auc_score(y, p[:, 1]) for p in (probs, other)]))


def test_ci_by_patient_is_wider_when_a_patients_slides_agree():
    """Slides of one patient share their score: resampling slides as if independent understates the spread."""
    rng = np.random.default_rng(2)
    patients = np.repeat(np.arange(40), 4)
    y = (patients % 2).astype(int)
    p_score = rng.normal(size=40) + 0.8 * (np.arange(40) % 2)
    p = 1 / (1 + np.exp(-(p_score[patients] + 0.05 * rng.normal(size=len(patients)))))
    probs = np.c_[1 - p, p]
    by_slide = bootstrap_auc(y, probs, seed=0)
    by_patient = bootstrap_auc(y, probs, groups=[f"P{i}" for i in patients], seed=0)
    assert by_patient["unit"] == "patient" and by_patient["n_units"] == 40
    assert by_patient["auc"] == by_slide["auc"]
    assert (by_patient["high"] - by_patient["low"]) > 1.5 * (by_slide["high"] - by_slide["low"])


# ---------------------------------------------------------------- cross-validated protocol


SMALL = dict(lrs=(1e-2,), weight_decays=(1e-4,), epochs=3, warmup_epochs=1, seeds=(0, 1), batch_size=8, progress=False)


def test_cross_validation_never_shows_a_fold_its_test_slides():
    bags, labels = _key_bags(36, seed=3)
    groups = [f"P{i // 2}" for i in range(36)]
    labels = [int((i // 2) % 2) for i in range(36)]
    for i, x in enumerate(bags):  # make the label visible in the key feature, patient by patient
        x[0, 0] += 4.0 * labels[i]
    ds = BagDataset.from_arrays(bags, labels, [f"s{i:02d}" for i in range(36)], ["neg", "pos"], groups=groups)
    folds = kfold_splits(ds.labels.numpy(), 3, seed=0, groups=ds.groups)
    cfg = MILConfig(**SMALL, bootstrap=200)
    seen: list = []
    real = run_cross_validation(ds, folds, cfg, ("abmil",), lambda *a: seen.append(a))
    json.dumps(real)  # JSON-able: attention went to the sink
    # Garbage in fold 0's test slides (only there: each slide is tested once) changes nothing in fold 0's selection.
    test0 = set(folds[0][1].tolist())
    rng = np.random.default_rng(9)
    garbage = BagDataset(
        [
            torch.from_numpy(rng.normal(size=b.shape).astype(np.float32) * 50) if i in test0 else b
            for i, b in enumerate(ds.features)
        ],
        ds.labels,
        ds.slide_ids,
        ds.classes,
        ds.groups,
    )
    fake = run_cross_validation(garbage, folds[:1], cfg, ("abmil",))
    for a, b in zip(real["folds"][0]["models"]["abmil"]["runs"], fake["folds"][0]["models"]["abmil"]["runs"]):
        assert (a["lr"], a["epoch"], a["val_slides"], a["grid"]) == (b["lr"], b["epoch"], b["val_slides"], b["grid"])
        assert a["test"]["probs"] != b["test"]["probs"]
    patient = dict(zip(ds.slide_ids, groups))
    for fold, (_, test_idx) in zip(real["folds"], folds):
        test_ids = {ds.slide_ids[i] for i in test_idx}
        assert set(fold["test_slide_ids"]) == test_ids
        for run in fold["models"]["abmil"]["runs"]:
            assert not (set(run["val_slides"]) | set(run["train_slides"])) & test_ids
            assert not {patient[s] for s in run["val_slides"]} & {patient[s] for s in run["train_slides"]}
    # Pooled: per seed every slide once, scored by its fold; the CI resamples patients.
    res = real["models"]["abmil"]
    for run in res["runs"]:
        assert sorted(run["test"]["slide_ids"]) == sorted(ds.slide_ids)
        ci = run["test"]["auc_ci"]
        assert ci["unit"] == "patient" and ci["n_units"] == 18 and ci["low"] <= ci["auc"] <= ci["high"]
    summary = res["summary"]
    assert summary["auc_macro"]["mean"] == pytest.approx(
        np.mean([r["test"]["metrics"]["auc_macro"] for r in res["runs"]])
    )
    assert summary["auc_ci"]["auc"] == pytest.approx(summary["auc_macro"]["mean"])
    fold_means = [f["models"]["abmil"]["summary"]["auc_macro"]["mean"] for f in real["folds"]]
    assert res["fold_summary"]["auc_macro"]["mean"] == pytest.approx(np.mean(fold_means))
    # The sink got each test slide's attention once per seed, one weight per instance, summing to 1.
    assert len(seen) == 3 * 2 and all(name == "abmil" for name, *_ in seen)
    for _, _, slide_ids, attention in seen:
        for sid, a in zip(slide_ids, attention):
            n = ds.features[ds.slide_ids.index(sid)].shape[0]
            assert a.shape == (n,) and a.sum() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="overlap"):
        run_cross_validation(ds, [(np.arange(20), np.arange(15, 36))], cfg, ("abmil",))


# ---------------------------------------------------------------- the command line


def _write_bags(folder, n, seed, with_coords=True):
    from clusiam_fast.formats.feature_bags import FeatureBag, write_bag, write_index

    bags, labels = _key_bags(n, seed, dim=8, key_shift=6.0)
    rows = []
    for i, x in enumerate(bags):
        coords = np.stack(np.meshgrid(np.arange(4), np.arange(3)), -1).reshape(-1, 2)[: len(x)] * 256
        bag = FeatureBag(f"s{i:02d}", x, coords=coords if with_coords else None, attrs={"method": "backbone"})
        write_bag(folder / "bags" / f"s{i:02d}.h5", bag)
        rows.append({"slide_id": bag.slide_id, "bag_path": f"bags/s{i:02d}.h5", "num_patches": len(x), "num_failed": 0})
    write_index(folder, rows)
    return labels, bags


MIL_ARGS = [
    "--epochs",
    "4",
    "--warmup-epochs",
    "1",
    "--lrs",
    "1e-2",
    "--wds",
    "1e-4",
    "--seeds",
    "0",
    "--batch-size",
    "8",
]
MIL_ARGS += ["--quiet", "--no-maps", "--bootstrap", "300"]


def test_evaluate_folds_by_patient_writes_cis_attention_and_heatmaps(tmp_path, capsys):
    from PIL import Image

    from clusiam_fast.evaluate import main

    labels, bags = _write_bags(tmp_path / "feats", 40, seed=4)
    patient = {f"s{i:02d}": f"P{i // 4 * 2 + y}" for i, y in enumerate(labels)}  # 2 slides of one class each
    with open(tmp_path / "slides.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label", "patient_id"])
        w.writerows([s, ["normal", "tumour"][y], patient[s]] for s, y in zip(patient, labels))
    out = tmp_path / "r"
    args = [str(tmp_path / "feats"), "--labels", str(tmp_path / "slides.csv"), "--out", str(out), *MIL_ARGS]
    assert main([*args, "--folds", "4", "--models", "maxpool", "abmil", "--attention-maps", "2"]) == 0
    res = json.loads((out / "report.json").read_text())["mil"]
    assert len(res["folds"]) == 4 and "StratifiedGroupKFold" in res["split"] and "by patient" in res["grouping"]
    assert sorted(res["test_slide_ids"]) == [f"s{i:02d}" for i in range(40)]
    for name in ("maxpool", "abmil"):
        ci = res["models"][name]["summary"]["auc_ci"]
        assert ci["unit"] == "patient" and ci["n_boot"] == 300 and ci["low"] <= ci["auc"] <= ci["high"]
        assert all(f["models"][name]["summary"]["auc_ci"]["unit"] == "patient" for f in res["folds"])
    assert res["models"]["abmil"]["summary"]["auc_ci"]["auc"] > 0.8  # the key instance is easy to see
    files = res["attention"]["abmil"]["files"]
    assert "maxpool" not in res["attention"] and len(files) == 40
    a = np.load(out / files["s01"])
    assert a.shape == (1, len(bags[1])) and a.sum() == pytest.approx(1.0, abs=1e-5)  # (seeds, patches)
    maps = res["attention_maps"]
    assert len(maps) == 2 and all(Image.open(out / m["png"]).size[0] > 100 for m in maps)
    md = (out / "report.md").read_text()
    assert "4-fold cross-validation" in md and "Per fold (mean over seeds):" in md
    assert "macro AUC [95% CI]" in md and "resampling test patients (20)" in md
    assert f"![abmil attention {maps[0]['slide_id']}]({maps[0]['png']})" in md
    # The paper's single split by default, now by patient.
    assert main([*args, "--models", "abmil", "--out", str(tmp_path / "r2")]) == 0
    single = json.loads((tmp_path / "r2" / "report.json").read_text())["mil"]
    assert "folds" not in single and "by patient" in single["split"]
    train_p = {patient[s] for s in single["models"]["abmil"]["runs"][0]["train_slides"]}
    test_p = {patient[s] for s in single["test_slide_ids"]}
    assert train_p and test_p and not train_p & test_p


def test_evaluate_refuses_mixed_patients_too_many_folds_and_split_leaks(tmp_path, capsys):
    from clusiam_fast.evaluate import main

    labels, _ = _write_bags(tmp_path / "feats", 12, seed=5, with_coords=False)
    base = [str(tmp_path / "feats"), "--out", str(tmp_path / "r"), *MIL_ARGS]
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("slide_id,label,patient_id\n" + "".join(f"s{i:02d},{y},P{i // 2}\n" for i, y in enumerate(labels)))
    assert main([*base, "--labels", str(mixed)]) == 2
    err = capsys.readouterr().err
    assert "patient 'P0'" in err and "s00" in err and "s01" in err and "patient_id" in err
    plain = tmp_path / "plain.csv"
    plain.write_text("slide_id,label\n" + "".join(f"s{i:02d},{y}\n" for i, y in enumerate(labels)))
    assert main([*base, "--labels", str(plain), "--folds", "7"]) == 2
    err = capsys.readouterr().err
    assert (
        "--folds 7" in err
        and "class '0' has 6" in err
        and "allow one train/test split and --folds 2 to 6" in err
        and "use --folds 6" in err
    )
    leak = tmp_path / "leak.csv"
    leak.write_text(
        "slide_id,label,split,patient_id\n"
        + "".join(f"s{i:02d},{y},{'test' if i in (0, 1, 2, 3) else 'train'},P{i % 6}\n" for i, y in enumerate(labels))
    )
    assert main([*base, "--labels", str(leak)]) == 2
    assert "in both train and test" in capsys.readouterr().err
    blank = tmp_path / "blank.csv"
    blank.write_text("slide_id,label,patient_id\ns00,0,\ns01,1,P1\n")
    assert main([*base, "--labels", str(blank)]) == 2
    assert "blank patient_id on line(s) 2" in capsys.readouterr().err


def test_patient_ids_are_read_and_checked(tmp_path):
    from clusiam_fast.evaluation.labels import read_slide_table

    ok = tmp_path / "ok.csv"
    ok.write_text("slide_id,label,patient_id\na,1,P1\nb,0, P2 \na,1,P1\nc,,\n")
    with pytest.warns(UserWarning):
        table = read_slide_table(ok)
    assert table.patients == {"a": "P1", "b": "P2"}  # the unlabelled row c needs no patient
    assert read_slide_table(_plain(tmp_path)).patients is None
    clash = tmp_path / "clash.csv"
    clash.write_text("slide_id,label,patient_id\na,1,P1\na,1,P9\n")
    with pytest.raises(ValueError, match=r"slide a has patient 'P1' \(line 2\) and 'P9' \(line 3\)"):
        read_slide_table(clash)


def _plain(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("slide_id,label\na,1\nb,0\n")
    return path
