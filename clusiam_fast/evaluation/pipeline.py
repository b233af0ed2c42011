"""Run every evaluation the labels allow on a folder of feature bags.

- always: dataset summary; cluster sizes (when bags hold assigner clusters); cluster
  maps of slides with coordinates.
- with patch labels: assigner clusters vs K-means (RI, ARI, NMI, clusters used) and,
  when the patches have a train/test split, top-1 cosine KNN macro F1.
- with slide labels: Max-pooling MIL and DSMIL under the protocol of
  :mod:`clusiam_fast.evaluation.mil.protocol` (the test slides sealed in a ``HeldOutTestSet``).

Writes ``OUT/report.md``, ``OUT/report.json`` (every number) and PNG figures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..formats.feature_bags import FeatureBag, load_bags, safe_name
from ..utils.atomic import atomic_write_json, atomic_write_text
from .cluster_map import save_cluster_map
from .clustering import evaluate_clustering, kmeans
from .knn import knn_evaluate
from .labels import join_patch_labels, read_slide_table
from .mil.data import BagDataset, stratified_split
from .mil.protocol import HeldOutTestSet, MILConfig, run_protocol
from .plots import plot_cluster_sizes, plot_roc
from .report import render_markdown

IMPLEMENTATIONS = {
    "rand_index": "sklearn.metrics.rand_score",
    "adjusted_rand_index": "sklearn.metrics.adjusted_rand_score",
    "nmi": "sklearn.metrics.normalized_mutual_info_score",
    "kmeans": "sklearn.cluster.KMeans (k-means++, n_init=3), MiniBatchKMeans above 50,000 patches, on L2-normalised features",
    "auc": "sklearn.metrics.roc_auc_score (class c vs rest, class-c probability), roc_curve",
    "accuracy": "sklearn.metrics.accuracy_score",
    "f1": "sklearn.metrics.f1_score(average='macro')",
    "split": "sklearn.model_selection.train_test_split(stratify=labels, random_state=seed)",
    "knn": "clusiam_fast.evaluation.knn.knn_top1 (chunked torch matmul of L2-normalised features; checked against sklearn NearestNeighbors in the tests)",
}


@dataclass
class EvalConfig:
    """What :func:`run_evaluation` does beyond the MIL protocol (``mil``)."""

    mil: MILConfig = field(default_factory=MILConfig)
    mil_models: tuple[str, ...] = ("maxpool", "dsmil")
    kmeans_k: int | None = None
    kmeans_normalize: bool = True
    map_kmeans_k: int = 8
    seed: int = 0
    test_fraction: float = 0.25
    knn_query_chunk: int = 1024
    knn_train_chunk: int = 32768
    device: str = "cpu"
    maps: bool = True
    max_maps: int = 50
    map_size: int = 2048
    annotations: Path | None = None
    progress: bool = True


def _sorted_classes(labels: list[str]) -> list[str]:
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _summary(bags: list[FeatureBag], features: Path) -> dict:
    first = bags[0]
    return {
        "features": str(features),
        "num_slides": len(bags),
        "num_patches": int(sum(len(b) for b in bags)),
        "feature_dim": int(first.features.shape[1]),
        "num_clusters": int(first.probs.shape[1]) if first.probs is not None else 0,
        "method": first.attrs.get("method", ""),
        "arch": first.attrs.get("arch", ""),
        "checkpoint": first.attrs.get("checkpoint", ""),
        "with_coords": int(sum(b.coords is not None for b in bags)),
        "dtype": str(first.features.dtype),
    }


def _slide_classification(bags: list[FeatureBag], labels_csv: Path, cfg: EvalConfig, out: Path, results: dict) -> None:
    checked = read_slide_table(labels_csv)
    table = checked.labels
    labelled = [b for b in bags if b.slide_id in table]
    unlabelled = sorted(b.slide_id for b in bags if b.slide_id not in table)
    missing_bags = sorted(set(table) - {b.slide_id for b in bags})
    info: dict[str, Any] = {
        "labels_file": str(labels_csv),
        "labelled_slides": len(labelled),
        "unlabelled_bags": len(unlabelled),
        "unlabelled_bag_ids": unlabelled[:50],
        "labels_without_bag": missing_bags[:50],
        "num_labels_without_bag": len(missing_bags),
        "blank_label_lines": checked.blank_rows,
        "duplicate_lines": checked.duplicate_rows,
        "class_counts": {
            c: sum(table[b.slide_id][0] == c for b in labelled)
            for c in _sorted_classes([table[b.slide_id][0] for b in labelled])
        },
    }
    results["slide_labels"] = info
    if not labelled:
        results["skipped"]["mil"] = (
            f"no bag's slide_id appears in {labels_csv} ({len(bags)} bags, e.g. {unlabelled[0]!r}; "
            f"{len(table)} labelled slides, e.g. {next(iter(table), '')!r})"
        )
        return
    classes = _sorted_classes([table[b.slide_id][0] for b in labelled])
    if len(classes) < 2:
        results["skipped"]["mil"] = (
            f"the {len(labelled)} labelled bags all have class {classes[0]!r} in {labels_csv}; slide classification needs two"
        )
        return
    ds = BagDataset(
        [torch.from_numpy(np.asarray(b.features)) for b in labelled],
        torch.tensor([classes.index(table[b.slide_id][0]) for b in labelled]),
        [b.slide_id for b in labelled],
        classes,
    )
    splits = [table[b.slide_id][1] for b in labelled]
    if all(s is not None for s in splits):
        test_idx = [i for i, s in enumerate(splits) if s == "test"]
        train_idx = [i for i, s in enumerate(splits) if s == "train"]
        info["split"] = f"from the split column of {labels_csv}"
    elif all(s is None for s in splits):
        train_idx, test_idx = stratified_split(ds.labels.numpy(), cfg.test_fraction, cfg.seed)
        info["split"] = (
            f"no split column: stratified seeded (seed {cfg.seed}) {1 - cfg.test_fraction:.0%}/{cfg.test_fraction:.0%} train/test split, made once before any training"
        )
    else:
        raise ValueError(f"{labels_csv}: give a split for every labelled slide or for none")
    if not len(test_idx) or not len(train_idx):
        results["skipped"]["mil"] = (
            f"{labels_csv} has {len(train_idx)} training and {len(test_idx)} test slides; both are needed"
        )
        return
    train, test = ds.subset(train_idx), ds.subset(test_idx)
    info.update(
        train_slides=len(train),
        test_slides=len(test),
        class_counts_train={c: int((train.labels == i).sum()) for i, c in enumerate(classes)},
        class_counts_test={c: int((test.labels == i).sum()) for i, c in enumerate(classes)},
        test_slide_ids=list(test.slide_ids),
    )
    mil = run_protocol(train, HeldOutTestSet(test), cfg.mil, cfg.mil_models)
    for name, res in mil["models"].items():
        res["roc_png"] = plot_roc(name, res["runs"], classes, out / f"roc_{name}.png").name
    results["mil"] = {**info, **mil}


def _patch_evaluations(bags: list[FeatureBag], patch_csv: Path, cfg: EvalConfig, results: dict) -> None:
    table = join_patch_labels(bags, patch_csv)
    k_head = int(bags[0].probs.shape[1]) if bags[0].probs is not None else None
    results["patch_labels"] = {
        "labelled_patches": int(len(table.labels)),
        "classes": _sorted_classes(list(table.labels)),
        "unlabelled_patches": table.unlabelled_patches,
        "labels_without_patch": table.unmatched_labels,
    }
    results["clustering"] = evaluate_clustering(
        table.features,
        table.labels,
        table.clusters,
        num_clusters=k_head,
        k=cfg.kmeans_k,
        seed=cfg.seed,
        normalize=cfg.kmeans_normalize,
    )
    if table.split is None:
        results["skipped"]["knn"] = f"{patch_csv} has no split column (train/test) for every labelled patch"
        return
    tr, te = table.split == "train", table.split == "test"
    if not tr.any() or not te.any():
        results["skipped"]["knn"] = (
            f"{patch_csv} needs both train and test patches (has {int(tr.sum())} and {int(te.sum())})"
        )
        return
    results["knn"] = knn_evaluate(
        table.features[tr],
        table.labels[tr],
        table.features[te],
        table.labels[te],
        query_chunk=cfg.knn_query_chunk,
        train_chunk=cfg.knn_train_chunk,
        device=cfg.device,
        progress=cfg.progress,
    )


def _cluster_maps(bags: list[FeatureBag], cfg: EvalConfig, out: Path, results: dict) -> None:
    from tqdm.auto import tqdm

    with_coords = [b for b in bags if b.coords is not None][: cfg.max_maps]
    if not with_coords:
        results["skipped"]["cluster_maps"] = "no bag has patch coordinates (extract from a tiler manifest to get them)"
        return
    source = "assigner argmax"
    if any(b.clusters is None for b in with_coords):
        labels, impl = kmeans(
            np.concatenate([b.features for b in with_coords]),
            cfg.map_kmeans_k,
            seed=cfg.seed,
            normalize=cfg.kmeans_normalize,
        )
        parts = np.split(labels, np.cumsum([len(b) for b in with_coords])[:-1])
        source = f"K-means (K = {cfg.map_kmeans_k}, {impl}): the features have no assigner"
    else:
        parts = [b.clusters for b in with_coords]
    maps, failed = [], []
    for bag, clusters in tqdm(
        list(zip(with_coords, parts)), desc="cluster maps", disable=not cfg.progress, leave=False
    ):
        name = safe_name(bag.slide_id)
        annotation = None
        if cfg.annotations is not None:
            annotation = next(
                (
                    p
                    for ext in (".png", ".jpg", ".tif", ".tiff")
                    if (p := Path(cfg.annotations) / f"{name}{ext}").is_file()
                ),
                None,
            )
        try:
            maps.append(
                {
                    "slide_id": bag.slide_id,
                    **save_cluster_map(
                        out / "maps" / f"{name}.png",
                        bag.coords,
                        clusters,
                        {**bag.attrs, "slide_id": bag.slide_id},
                        annotation=annotation,
                        max_size=cfg.map_size,
                    ),
                }
            )
            maps[-1]["png"] = f"maps/{name}.png"
        except Exception as error:  # one slide's map must not stop the report
            failed.append({"slide_id": bag.slide_id, "error": f"{type(error).__name__}: {error}"})
    results["cluster_maps"] = {"clusters_from": source, "maps": maps, "failed": failed}


def run_evaluation(
    features: str | Path,
    out: str | Path,
    *,
    labels: str | Path | None = None,
    patch_labels: str | Path | None = None,
    cfg: EvalConfig | None = None,
) -> dict:
    """Evaluate the bags in ``features``; write report.md, report.json and figures into ``out``."""
    cfg = cfg or EvalConfig()
    features, out = Path(features), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bags = load_bags(features)
    results: dict[str, Any] = {
        "inputs": _summary(bags, features),
        "implementations": IMPLEMENTATIONS,
        "skipped": {},
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("mil", "progress")},
    }
    results["config"]["mil"] = {k: v for k, v in asdict(cfg.mil).items() if k != "progress"}
    if all(b.clusters is not None for b in bags):
        ids, counts = np.unique(np.concatenate([b.clusters for b in bags]), return_counts=True)
        sizes = {int(i): int(c) for i, c in zip(ids, counts)}
        results["cluster_sizes"] = {
            "clusters_used": len(sizes),
            "sizes": sizes,
            "png": plot_cluster_sizes(sizes, out / "cluster_sizes.png").name,
        }
    else:
        results["skipped"]["cluster_sizes"] = (
            "the features have no assigner clusters (SimSiam/BYOL or a plain backbone)"
        )
    if patch_labels is not None:
        _patch_evaluations(bags, Path(patch_labels), cfg, results)
    else:
        results["skipped"]["clustering"] = results["skipped"]["knn"] = "no --patch-labels given"
    if labels is not None:
        _slide_classification(bags, Path(labels), cfg, out, results)
    else:
        results["skipped"]["mil"] = "no --labels given"
    if cfg.maps:
        _cluster_maps(bags, cfg, out, results)
    else:
        results["skipped"]["cluster_maps"] = "disabled"
    results = _json_safe(results)
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", render_markdown(results))
    return results
