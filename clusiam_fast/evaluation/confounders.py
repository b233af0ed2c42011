"""Clusters against the hospital: do the clusters follow the class, or the centre the patch came from?

A ``center`` column (or ``centre``, ``site``, ``batch``, ``scanner``; the first one found) in
patches.csv, or in slides.csv (a patch then has its slide's centre), names each patch's
confounder. For the assigner clusters and for K-means with the same K:

- adjusted Rand index and Rand index against the label and against the centre
  (``sklearn.metrics.adjusted_rand_score``, ``rand_score``);
- the **clustering score** = ARI(clusters, label) - ARI(clusters, centre), PathoROB's
  ``compute_clustering_score`` (``pathorob/clustering_score/utils.py`` of bifold-pathomics/PathoROB,
  arXiv:2507.17845): 1 = clusters are the classes, below 0 = they follow the centre more than
  the class (PathoROB finds K-means clusters of Phikon-v2 at -0.991 on Camelyon). A row whose
  score is below 0 is flagged (``follows_centre``).

And the patch KNN when the nearest training patch must come from **another centre**
(top-1 cosine, as :mod:`.knn`): a representation that sorts by centre loses accuracy here,
the idea of PathoROB's robustness index (same class / other centre neighbours).
"""

from __future__ import annotations

import numpy as np

from .clustering import kmeans
from .knn import knn_top1
from .labels import PatchTable, patch_keys, read_csv
from .metrics import patch_classification_metrics

CENTRE_COLUMNS = ("center", "centre", "site", "batch", "scanner")


def _centre_column(df) -> str | None:
    return next((c for c in CENTRE_COLUMNS if c in df.columns), None)


def read_centres(path, key: str) -> tuple[dict, str] | None:
    """key -> centre of the rows of ``path`` that name one, and the column; None without such a column.

    ``key``: ``"slide"`` (slides.csv: keyed by slide_id) or ``"patch"`` (patches.csv: path or slide_id,x,y)."""
    df = read_csv(path, "labels")
    column = _centre_column(df)
    if column is None:
        return None
    keys = [str(s).strip() for s in df["slide_id"]] if key == "slide" else patch_keys(df, path)[0]
    centres: dict = {}
    for k, value in zip(keys, df[column]):
        value = str(value).strip()
        if value and centres.setdefault(k, value) != value:
            raise ValueError(f"{path}: {k} has two {column} values, {centres[k]!r} and {value!r}; give it one")
    return centres, column


def patch_centres(table: PatchTable, patch_csv, slide_csv=None) -> tuple[np.ndarray, str] | None:
    """Each labelled patch's centre ('' when unknown) from patches.csv, else from its slide in slides.csv."""
    found = read_centres(patch_csv, "patch")
    if found is not None:
        centres, column = found
        return np.asarray([centres.get(k, "") for k in table.keys], dtype=object), f"{column} column of {patch_csv}"
    found = None if slide_csv is None else read_centres(slide_csv, "slide")
    if found is not None:
        centres, column = found
        return np.asarray(
            [centres.get(s, "") for s in table.slide_ids], dtype=object
        ), f"{column} column of {slide_csv}"
    return None


def clustering_score(labels, centres, clusters) -> dict:
    """ARI and RI of ``clusters`` against the labels and against the centres, and PathoROB's clustering score."""
    from ..utils.deps import require

    m = require("sklearn.metrics", "scikit-learn", "the clustering score")
    ari_label, ari_centre = m.adjusted_rand_score(labels, clusters), m.adjusted_rand_score(centres, clusters)
    return {
        "ari_label": float(ari_label),
        "ri_label": float(m.rand_score(labels, clusters)),
        "ari_centre": float(ari_centre),
        "ri_centre": float(m.rand_score(centres, clusters)),
        "clustering_score": float(ari_label - ari_centre),
        "follows_centre": bool(ari_label - ari_centre < 0),
    }


def cross_centre_knn(features, labels, centres, split, **options) -> dict:
    """Top-1 cosine KNN from train to test patches with the neighbour drawn from another centre."""
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    predicted = np.empty(len(test), dtype=object)
    for centre in np.unique(centres[test]):
        queries = test[centres[test] == centre]
        bank = train[centres[train] != centre]
        if len(bank) == 0:
            raise ValueError(f"every training patch is from centre {centre!r}: no neighbour from another centre")
        idx, _ = knn_top1(features[bank], features[queries], **options)
        predicted[np.isin(test, queries)] = labels[bank][idx]
    out = patch_classification_metrics(labels[test], predicted.astype(labels.dtype))
    out.update(n_train=int(len(train)), n_test=int(len(test)))
    return out


def confounder_analysis(
    table: PatchTable,
    centres: np.ndarray,
    source: str,
    *,
    num_clusters: int | None,
    seed: int = 0,
    normalize: bool = True,
    **knn_options,
) -> dict:
    """The clustering score of the assigner and of K-means (same K) and the cross-centre KNN (see the module)."""
    known = centres != ""
    feats, labels, centres = table.features[known], table.labels[known], centres[known].astype(str)
    result: dict = {"centres_from": source, "patches": int(known.sum()), "centres": {}}
    result["centres"] = {str(c): int(n) for c, n in zip(*np.unique(centres, return_counts=True))}
    if len(result["centres"]) < 2:
        result["skipped"] = f"the labelled patches come from {len(result['centres'])} centre(s) ({source}); need two"
        return result
    rows = []
    k = None
    if table.clusters is not None:
        assigned = table.clusters[known]
        rows.append({"method": "assigner (argmax)", "k": int(num_clusters or assigned.max() + 1)})
        rows[-1].update(clustering_score(labels, centres, assigned))
        k = int(len(np.unique(assigned)))
    k = k or len(np.unique(labels))
    pred, impl = kmeans(feats, k, seed=seed, normalize=normalize)
    rows.append({"method": "K-means (same K)" if table.clusters is not None else "K-means (K = classes)", "k": k})
    rows[-1].update(clustering_score(labels, centres, pred), implementation=impl)
    result["rows"] = rows
    result["follows_centre"] = [r["method"] for r in rows if r["follows_centre"]]
    split = None if table.split is None else table.split[known]
    if split is not None and (split == "train").any() and (split == "test").any():
        try:
            result["knn_other_centre"] = cross_centre_knn(feats, labels, centres, split, **knn_options)
        except ValueError as error:
            result["knn_other_centre"] = {"skipped": str(error)}
    return result


def colour_by_centre(parts: list[np.ndarray], slide_ids: list[str], centres: dict[str, str]):
    """Cluster maps coloured by centre: each cluster painted in the colour of the centre most of its patches
    come from (over every mapped slide with a centre), so clusters that belong to one hospital show.

    Returns (per-slide ids to paint, legend names of the ids, the share of each cluster's majority centre)."""
    names = sorted(set(centres.values())) + ["no centre"]
    votes: dict[int, dict[str, int]] = {}
    for clusters, sid in zip(parts, slide_ids):
        centre = centres.get(sid)
        if centre is not None:
            for c, n in zip(*np.unique(clusters, return_counts=True)):
                votes.setdefault(int(c), {}).setdefault(centre, 0)
                votes[int(c)][centre] += int(n)
    majority = {c: max(v, key=v.get) for c, v in votes.items()}
    share = {c: votes[c][m] / sum(votes[c].values()) for c, m in majority.items()}
    unknown = len(names) - 1
    painted = [np.asarray([names.index(majority[int(c)]) if int(c) in majority else unknown for c in p]) for p in parts]
    return painted, dict(enumerate(names)), share
