"""Clusters against patch labels: the assigner's argmax vs K-means on the same features.

K-means is scikit-learn's ``KMeans`` (k-means++, ``n_init`` restarts) up to
``minibatch_above`` patches and ``MiniBatchKMeans`` beyond; the features are
L2-normalised first by default (cosine geometry, as the SSL heads are trained in).
By default K-means gets K = the number of clusters the assigner actually used, so both
partitions have the same number of clusters (the paper's "same K" comparison); a
second K-means row uses K = the number of label classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..utils.deps import require
from .metrics import clustering_metrics


def kmeans(
    features: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    normalize: bool = True,
    n_init: int = 3,
    minibatch_above: int = 50_000,
) -> tuple[np.ndarray, str]:
    """Cluster ``features`` into ``k`` groups; return (labels, name of the implementation)."""
    cluster = require("sklearn.cluster", "scikit-learn", "K-means")
    x = np.asarray(features, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = int(max(1, min(k, len(x))))
    if len(x) > minibatch_above:
        algo = cluster.MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=n_init, batch_size=4096)
        name = "sklearn.cluster.MiniBatchKMeans"
    else:
        algo = cluster.KMeans(n_clusters=k, random_state=seed, n_init=n_init)
        name = "sklearn.cluster.KMeans"
    return algo.fit_predict(x), name


def evaluate_clustering(
    features: np.ndarray,
    labels: Sequence,
    assigner_clusters: Sequence[int] | None = None,
    *,
    num_clusters: int | None = None,
    k: int | None = None,
    seed: int = 0,
    normalize: bool = True,
) -> list[dict]:
    """Rows of (method, K, clusters used, RI, ARI, NMI).

    ``num_clusters``: the assigner's K (size of its head), reported as its K.
    ``k``: K-means K; default = clusters used by the assigner, or the number of label
    classes when there is no assigner.
    """
    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    rows = []
    if assigner_clusters is not None:
        assigned = np.asarray(assigner_clusters)
        row = {
            "method": "assigner (argmax)",
            "k": int(num_clusters or assigned.max() + 1),
            "implementation": "CluSiam cluster assigner",
        }
        row.update(clustering_metrics(labels, assigned))
        rows.append(row)
        if k is None:
            k = row["clusters_used"]
    ks = [("K-means (same K)" if assigner_clusters is not None else "K-means", k if k is not None else n_classes)]
    if ks[0][1] != n_classes:
        ks.append(("K-means (K = classes)", n_classes))
    for method, kk in ks:
        pred, impl = kmeans(features, kk, seed=seed, normalize=normalize)
        row = {"method": method, "k": int(kk), "implementation": impl}
        row.update(clustering_metrics(labels, pred))
        rows.append(row)
    return rows
