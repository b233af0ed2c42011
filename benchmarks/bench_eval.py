"""Evaluation speed: chunked top-1 cosine KNN vs scikit-learn's brute force, and MIL training steps.

Run: ``pytest benchmarks/bench_eval.py --benchmark-only``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from clusiam_fast.evaluation.knn import knn_top1
from clusiam_fast.evaluation.mil import BagDataset, build_mil

TRAIN, TEST, DIM = 20_000, 1_000, 512


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    return rng.standard_normal((TRAIN, DIM), dtype=np.float32), rng.standard_normal((TEST, DIM), dtype=np.float32)


def test_knn_chunked(benchmark, features):
    from sklearn.neighbors import NearestNeighbors

    train, test = features
    t0 = time.perf_counter()
    NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(train).kneighbors(test)
    sklearn_s = time.perf_counter() - t0
    benchmark.pedantic(knn_top1, args=(train, test), rounds=3, iterations=1)
    benchmark.extra_info.update(
        train=TRAIN,
        test=TEST,
        dim=DIM,
        sklearn_brute_s=sklearn_s,
        speedup_vs_sklearn=sklearn_s / benchmark.stats.stats.mean,
    )


@pytest.mark.parametrize("name", ["maxpool", "dsmil"])
def test_mil_train_epoch(benchmark, name):
    """One epoch over 64 bags of 500 instances (batch 8, padded), forward + backward + Adam."""
    rng = np.random.default_rng(0)
    bags = BagDataset.from_arrays(
        [rng.standard_normal((int(n), DIM), dtype=np.float32) for n in rng.integers(300, 700, 64)],
        [i % 2 for i in range(64)],
    )
    model = build_mil(name, DIM, 2)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def epoch():
        for x, mask, y in bags.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0)):
            loss = model.loss(model(x, mask), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    benchmark.pedantic(epoch, rounds=3, iterations=1)
    benchmark.extra_info.update(
        bags=64, instances=int(sum(len(b) for b in bags.features)), bags_per_s=64 / benchmark.stats.stats.mean
    )


def test_paired_bootstrap(benchmark):
    """1000 paired replicates of the macro AUC and balanced-accuracy differences, 5 seeds each, 500 test slides, 4 classes."""
    from clusiam_fast.evaluation.paired import paired_bootstrap

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500)
    runs = [[rng.dirichlet(np.ones(4), 500) for _ in range(5)] for _ in range(2)]

    def both():
        for metric in ("auc", "balanced_accuracy"):
            paired_bootstrap(labels, runs[0], runs[1], metric=metric)

    benchmark.pedantic(both, rounds=2, iterations=1)
    benchmark.extra_info.update(slides=500, classes=4, seeds=5, replicates=1000)


def test_linear_probe(benchmark, features):
    """The logistic-regression probe: 6 values of C on a validation split, refit, 5 seeds; 2000 x 512 training patches."""
    from clusiam_fast.evaluation.probe import linear_probe

    train, test = features
    y = (train[:2000, 0] > 0).astype(int)
    benchmark.pedantic(
        linear_probe, args=(train[:2000], y, test, (test[:, 0] > 0).astype(int), ["0", "1"]), rounds=1, iterations=1
    )
