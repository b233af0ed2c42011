"""Metrics, clustering and KNN against scikit-learn and hand-counted answers, on real features."""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import pytest

from clusiam_fast.evaluation.clustering import evaluate_clustering, kmeans
from clusiam_fast.evaluation.knn import knn_evaluate, knn_top1
from clusiam_fast.evaluation.metrics import (
    classification_metrics,
    clustering_metrics,
    mean_std,
    patch_classification_metrics,
)

KATHER = {0: "tumour", 1: "stroma", 2: "complex", 3: "lympho", 4: "debris", 5: "mucosa", 6: "adipose", 7: "empty"}
CRC7K = {
    "TUM": "tumour",
    "STR": "stroma",
    "LYM": "lympho",
    "DEB": "debris",
    "NORM": "mucosa",
    "ADI": "adipose",
    "MUC": "mucus",
    "MUS": "muscle",
}


def crc_label(name: str) -> str:
    """Tissue class from a crc-mini file name (see shared/data/README.md)."""
    m = re.search(r"_label_(\d)", name)
    return KATHER[int(m.group(1))] if m else CRC7K[name.split("-")[0]]


@pytest.fixture(scope="module")
def crc_features(crc_random_bags) -> tuple[np.ndarray, np.ndarray]:
    bags = crc_random_bags
    feats = np.concatenate([b.features for b in bags])
    labels = np.array([crc_label(p.rsplit("/", 1)[-1]) for b in bags for p in b.paths])
    return feats, labels


def test_classification_metrics_match_sklearn_and_hand_values():
    from sklearn.metrics import roc_auc_score

    # Hand-made: class 1 scores 0.9, 0.4 (positives) vs 0.6, 0.2 (negatives): 3 of 4 pairs ordered -> AUC 0.75.
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.4, 0.6], [0.8, 0.2]])
    m = classification_metrics([1, 1, 0, 0], probs, ["a", "b"])
    assert m["auc"]["b"] == pytest.approx(0.75) and m["auc"]["a"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)  # argmax: b, a, b, a -> rows 0 and 3 right
    # Random 4-class case: per-class one-vs-rest AUC equals scikit-learn's multi-class OvR.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = rng.dirichlet(np.ones(4), 200) + np.eye(4)[y] * 0.3
    p /= p.sum(1, keepdims=True)
    m = classification_metrics(y, p, list("wxyz"))
    expected = roc_auc_score(y, p, multi_class="ovr", average=None)
    assert [m["auc"][c] for c in "wxyz"] == pytest.approx(list(expected))
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    # A class absent from the labels has no AUC, and the macro mean skips it.
    m = classification_metrics([0, 1, 0, 1], np.full((4, 3), 1 / 3), ["a", "b", "c"])
    assert math.isnan(m["auc"]["c"]) and m["auc_macro"] == pytest.approx(0.5)


def test_rand_index_equals_pair_counting_on_real_clusters(crc_features):
    feats, labels = crc_features
    pred, impl = kmeans(feats, 6, seed=0)
    assert impl == "sklearn.cluster.KMeans" and len(np.unique(pred)) == 6
    agree = sum(
        (labels[i] == labels[j]) == (pred[i] == pred[j]) for i, j in itertools.combinations(range(len(labels)), 2)
    )
    m = clustering_metrics(labels, pred)
    assert m["rand_index"] == pytest.approx(agree / math.comb(len(labels), 2))
    assert m["clusters_used"] == 6
    # ARI: 1 for the labels themselves under any renaming, ~0 for a random partition.
    renamed = np.unique(labels, return_inverse=True)[1] * 7 + 3
    assert clustering_metrics(labels, renamed)["adjusted_rand_index"] == pytest.approx(1.0)
    assert (
        abs(clustering_metrics(labels, np.random.default_rng(0).integers(0, 6, len(labels)))["adjusted_rand_index"])
        < 0.1
    )


def test_assigner_vs_kmeans_uses_the_same_number_of_clusters(crc_features):
    feats, labels = crc_features
    assigner = np.random.default_rng(1).choice([3, 17, 40, 41, 90], len(labels))  # 5 of K = 100 clusters used
    rows = evaluate_clustering(feats, labels, assigner, num_clusters=100, seed=0)
    assert [r["method"] for r in rows] == ["assigner (argmax)", "K-means (same K)", "K-means (K = classes)"]
    assert rows[0]["k"] == 100 and rows[0]["clusters_used"] == 5
    assert rows[1]["k"] == 5 and rows[1]["clusters_used"] == 5
    assert rows[2]["k"] == len(np.unique(labels))
    # Real features cluster better than random assignments.
    assert rows[1]["adjusted_rand_index"] > rows[0]["adjusted_rand_index"]


def test_knn_top1_matches_sklearn_with_chunking(crc_features):
    from sklearn.metrics import f1_score
    from sklearn.neighbors import NearestNeighbors

    feats, labels = crc_features
    rng = np.random.default_rng(0)
    order = rng.permutation(len(feats))
    train, test = order[:80], order[80:]
    idx, sim = knn_top1(feats[train], feats[test], query_chunk=7, train_chunk=13)  # many chunks on both sides
    dist, ref = (
        NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(feats[train]).kneighbors(feats[test])
    )
    np.testing.assert_allclose(sim, 1 - dist[:, 0], atol=1e-5)
    assert (idx == ref[:, 0]).mean() > 0.95  # ties aside, the same neighbours
    res = knn_evaluate(feats[train], labels[train], feats[test], labels[test], query_chunk=5, train_chunk=11)
    assert res["f1_macro"] == pytest.approx(f1_score(labels[test], labels[train][ref[:, 0]], average="macro"), abs=0.03)
    assert res["n_train"] == 80 and res["n_test"] == len(test)
    # Known input: each test row is a scaled copy of one training row -> its exact neighbour.
    bank = rng.normal(size=(50, 8)).astype(np.float32)
    pick = rng.integers(0, 50, 20)
    idx, sim = knn_top1(bank, bank[pick] * 3.0, query_chunk=3, train_chunk=4)
    assert (idx == pick).all() and np.allclose(sim, 1.0, atol=1e-5)


def test_patch_f1_and_mean_std_match_reference():
    from sklearn.metrics import f1_score

    y, p = ["a", "a", "b", "c", "c", "c"], ["a", "b", "b", "c", "a", "c"]
    m = patch_classification_metrics(y, p)
    assert m["f1_macro"] == pytest.approx(f1_score(y, p, average="macro")) and m["accuracy"] == pytest.approx(4 / 6)
    s = mean_std([0.8, 0.9, float("nan"), 1.0])
    assert (
        s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(np.std([0.8, 0.9, 1.0], ddof=1)) and s["n"] == 3
    )
