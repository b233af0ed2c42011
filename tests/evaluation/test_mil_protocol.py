"""The MIL protocol: schedule, stratified split, honest model selection, mean/std over seeds.

The test slides must be unreachable during model selection *by construction*:
``select_model`` only receives the training slides, the test slides live in a
``HeldOutTestSet`` that evaluates each selection once, and swapping the test set for
garbage changes nothing about what gets selected (checked bit for bit).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clusiam_fast.evaluation.mil import (
    BagDataset,
    HeldOutTestSet,
    MILConfig,
    key_instance_bags,
    run_protocol,
    select_model,
    stratified_split,
    warmup_cosine,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster on 2 shared cores


@pytest.fixture(scope="module")
def crc_bags(crc_random_bags) -> tuple[BagDataset, BagDataset]:
    """Real crc-mini tiles embedded by a seeded random ResNet-18; bags positive when they hold a tumour tile."""
    feats, tumour = [], []
    for bag in crc_random_bags:
        for f, p in zip(bag.features, bag.paths):
            feats.append(f)
            tumour.append("_label_0" in p or Path(p).name.startswith("TUM"))
    feats, tumour = np.stack(feats), np.array(tumour)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(feats))
    halves = order[: len(order) // 2], order[len(order) // 2 :]
    sets = []
    for k, half in enumerate(halves):
        f, y, _ = key_instance_bags(
            feats[half][~tumour[half]],
            feats[half][tumour[half]],
            48 if k == 0 else 24,
            bag_size=(4, 8),
            num_keys=(1, 2),
            seed=k,
        )
        sets.append(BagDataset.from_arrays(f, y, [f"slide{k}_{i}" for i in range(len(f))], ["normal", "tumour"]))
    return sets[0], sets[1]


SMALL = dict(
    lrs=(1e-2, 1e-3), weight_decays=(1e-3,), epochs=4, warmup_epochs=1, seeds=(0, 1), batch_size=8, progress=False
)


def test_warmup_then_cosine():
    total, warm = 100, 10
    f = [warmup_cosine(s, total, warm) for s in range(total)]
    assert all(a < b for a, b in zip(f[:warm], f[1:warm])) and f[warm - 1] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[warm:], f[warm + 1 :]))
    assert f[warm] == pytest.approx(1.0) and f[-1] < 0.01
    assert warmup_cosine(0, 10, 0) == pytest.approx(1.0)


def test_stratified_split_is_seeded_stratified_and_complete():
    labels = np.array([0] * 40 + [1] * 20 + [2] * 12)
    keep, held = stratified_split(labels, 0.25, seed=3)
    again = stratified_split(labels, 0.25, seed=3)
    other = stratified_split(labels, 0.25, seed=4)
    assert np.array_equal(keep, again[0]) and np.array_equal(held, again[1])
    assert not np.array_equal(held, other[1])
    assert sorted(np.r_[keep, held]) == list(range(len(labels))) and not set(keep) & set(held)
    for c, n in zip((0, 1, 2), (40, 20, 12)):
        assert abs((labels[held] == c).sum() - n * 0.25) <= 1
    with pytest.raises(ValueError, match="at least 2 slides per class"):
        stratified_split(np.array([0, 0, 0, 1]), 0.25, seed=0)


def test_selection_cannot_reach_the_test_set(crc_bags):
    train, test = crc_bags
    # 1. The selection function has no way to receive test data.
    assert list(inspect.signature(select_model).parameters) == ["model_name", "train_slides", "cfg", "seed"]
    # 2. Whatever the test slides hold, the selection is identical, bit for bit.
    rng = np.random.default_rng(5)
    garbage = BagDataset(
        [torch.from_numpy(rng.normal(size=b.shape).astype(np.float32) * 100) for b in test.features],
        1 - test.labels,
        list(test.slide_ids),
        list(test.classes),
    )
    cfg = MILConfig(**SMALL)
    sealed, sealed_garbage = HeldOutTestSet(test), HeldOutTestSet(garbage)
    real = run_protocol(train, sealed, cfg, models=("maxpool", "dsmil"))
    fake = run_protocol(train, sealed_garbage, cfg, models=("maxpool", "dsmil"))
    for name in ("maxpool", "dsmil"):
        for a, b in zip(real["models"][name]["runs"], fake["models"][name]["runs"]):
            assert (a["lr"], a["weight_decay"], a["epoch"], a["val_slides"]) == (
                b["lr"],
                b["weight_decay"],
                b["epoch"],
                b["val_slides"],
            )
            assert a["grid"] == b["grid"] and a["val"] == b["val"]  # every epoch's validation numbers
            assert a["test"]["metrics"] != b["test"]["metrics"]  # the test sets did differ
            assert not set(a["val_slides"]) & set(test.slide_ids)
    # 3. Each (model, seed) selection was scored on the test set exactly once, and only once.
    assert sealed.evaluations == sealed_garbage.evaluations == 2 * len(SMALL["seeds"])
    selection = select_model("maxpool", train, cfg, seed=0)
    with pytest.raises(RuntimeError, match="already used"):
        sealed.evaluate(selection)
    # 4. A bare test set is refused: it must come sealed.
    with pytest.raises(TypeError, match="HeldOutTestSet"):
        run_protocol(train, test, cfg)


def test_selection_picks_the_best_validation_checkpoint(crc_bags):
    train, _ = crc_bags
    cfg = MILConfig(**{**SMALL, "seeds": (0,)})
    sel = select_model("dsmil", train, cfg, seed=0)
    score = lambda g: 0.5 * (g["val_auc_macro"] + g["val_accuracy"])  # noqa: E731 - the default auc_acc criterion
    best_grid = max(sel.grid, key=lambda g: (score(g), -g["val_loss"]))
    assert (sel.lr, sel.weight_decay) == (best_grid["lr"], best_grid["weight_decay"])
    history = best_grid["history"]
    assert sel.epoch == max(
        range(len(history)),
        key=lambda e: (0.5 * (history[e]["val_auc_macro"] + history[e]["val_accuracy"]), -history[e]["val_loss"]),
    )
    assert len(sel.grid) == len(SMALL["lrs"]) * len(SMALL["weight_decays"]) and all(
        len(g["history"]) == SMALL["epochs"] for g in sel.grid
    )
    assert len(sel.val_slides) == round(0.25 * len(train)) and not set(sel.val_slides) & set(sel.train_slides)


def test_protocol_reports_mean_and_std_over_seeds(crc_bags):
    from sklearn.metrics import accuracy_score, roc_auc_score

    train, test = crc_bags
    cfg = MILConfig(**{**SMALL, "seeds": (0, 1, 2), "lrs": (1e-2,)})
    res = run_protocol(train, HeldOutTestSet(test), cfg, models=("maxpool",))
    json.dumps(res)  # every number is serialisable
    runs = res["models"]["maxpool"]["runs"]
    summary = res["models"]["maxpool"]["summary"]
    accs = [r["test"]["metrics"]["accuracy"] for r in runs]
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert summary["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    for r in runs:  # per-run numbers are scikit-learn's on the stored predictions
        probs, labels = np.array(r["test"]["probs"]), np.array(r["test"]["labels"])
        assert r["test"]["metrics"]["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
        assert r["test"]["metrics"]["auc"]["tumour"] == pytest.approx(roc_auc_score(labels == 1, probs[:, 1]))
        assert r["test"]["slide_ids"] == list(test.slide_ids)
    aucs = [r["test"]["metrics"]["auc"]["tumour"] for r in runs]
    assert summary["auc"]["tumour"]["mean"] == pytest.approx(np.mean(aucs))
    assert len({r["seed"] for r in runs}) == 3


def test_config_is_validated():
    with pytest.raises(ValueError, match="select_metric"):
        MILConfig(select_metric="test_auc")
    with pytest.raises(ValueError, match="val_fraction"):
        MILConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        MILConfig(epochs=3, warmup_epochs=5)
