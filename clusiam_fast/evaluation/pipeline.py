"""Run every evaluation the labels allow on a folder of feature bags.

- always: dataset summary; cluster sizes (when bags hold assigner clusters); cluster
  maps of slides with coordinates.
- with patch labels: assigner clusters vs K-means (RI, ARI, NMI, clusters used) and,
  when the patches have a train/test split, top-1 cosine KNN macro F1.
- with slide labels: Max-pooling MIL, DSMIL and ABMIL under the protocol of
  :mod:`clusiam_fast.evaluation.mil.protocol` (the test slides sealed in a ``HeldOutTestSet``),
  on one split (the paper's) or on every fold of ``EvalConfig.folds`` stratified folds
  (:mod:`clusiam_fast.evaluation.mil.crossval`); by patient when slides.csv has a
  ``patient_id`` column; test AUC with a bootstrap 95% CI.

Before anything runs, bags that cannot be evaluated are left out by name
(:mod:`.bag_checks`) and :func:`plan_slide_classification` makes every split of the MIL
protocol (:mod:`.mil.plan`); ``clusiam_fast.study`` runs the same check before training.

Writes ``OUT/report.md``, ``OUT/report.json`` (every number), PNG figures, each test
slide's attention (``OUT/attention/<model>/<slide>.npy``, one row per seed) and ABMIL (else DSMIL)
attention heatmaps of a few test slides with coordinates (``OUT/attention/*.png``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..formats.feature_bags import FeatureBag, load_bags, safe_name
from ..utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from .bag_checks import screen_bags
from .cluster_map import save_cluster_map, save_score_map
from .clustering import evaluate_clustering, kmeans
from .confounders import CENTRE_COLUMNS, colour_by_centre, confounder_analysis, patch_centres, read_centres
from .field_metrics import add_field_metrics
from .knn import knn_evaluate
from .labels import PatchTable, join_patch_labels, read_slide_table
from .leakage import bag_files, guard_pretrain_overlap, test_slide_ids
from .mil.crossval import run_cross_validation
from .mil.data import BagDataset
from .mil.plan import plan_splits
from .mil.protocol import HeldOutTestSet, MILConfig, run_protocol
from .mil.registry import DEFAULT_MODELS
from .mil.splits import check_patients
from .plots import plot_cluster_sizes, plot_roc
from .probe import DEFAULT_CS, linear_probe, slide_probe
from .report import render_markdown

IMPLEMENTATIONS = {
    "rand_index": "sklearn.metrics.rand_score",
    "adjusted_rand_index": "sklearn.metrics.adjusted_rand_score",
    "nmi": "sklearn.metrics.normalized_mutual_info_score",
    "kmeans": "sklearn.cluster.KMeans (k-means++, n_init=3), MiniBatchKMeans above 50,000 patches, on L2-normalised features",
    "auc": "sklearn.metrics.roc_auc_score (class c vs rest, class-c probability), roc_curve",
    "accuracy": "sklearn.metrics.accuracy_score",
    "f1": "sklearn.metrics.f1_score(average='macro')",
    "split": "sklearn.model_selection.train_test_split(stratify=labels, random_state=seed); by patient: a seeded share of each class's patients",
    "kfold": "sklearn.model_selection.StratifiedKFold(shuffle=True), StratifiedGroupKFold by patient",
    "auc_ci": "clusiam_fast.evaluation.bootstrap.bootstrap_auc: stratified percentile bootstrap of slides (patients with patient_id), seeded",
    "balanced_accuracy": "sklearn.metrics.balanced_accuracy_score (eva's headline; Patho-Bench bacc), bootstrap CI of the mean over seeds",
    "auc_ovr_ovo": "sklearn.metrics.roc_auc_score(multi_class='ovr'|'ovo', average='macro') (Patho-Bench)",
    "qwk": "sklearn.metrics.cohen_kappa_score(weights='quadratic'), with --ordinal (Patho-Bench)",
    "linear_probe": "sklearn LogisticRegression (lbfgs) on standardised features, C swept on a stratified validation split of the training units only, refitted on all of them (Patho-Bench linear probe)",
    "clustering_score": "ARI(clusters, label) - ARI(clusters, centre): PathoROB pathorob/clustering_score/utils.py compute_clustering_score",
    "knn": "clusiam_fast.evaluation.knn.knn_top1 (chunked torch matmul of L2-normalised features; checked against sklearn NearestNeighbors in the tests)",
}


@dataclass
class EvalConfig:
    """What :func:`run_evaluation` does beyond the MIL protocol (``mil``)."""

    mil: MILConfig = field(default_factory=MILConfig)
    mil_models: tuple[str, ...] = DEFAULT_MODELS
    folds: int | None = None
    attention_maps: int = 4
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
    map_colour: str = "cluster"  # or "centre": each cluster in the colour of its majority centre
    annotations: Path | None = None
    allow_pretrain_overlap: bool = False
    ordinal: bool = False
    probe: bool = True
    probe_cs: tuple[float, ...] = DEFAULT_CS
    progress: bool = True

    def __post_init__(self) -> None:
        if self.folds is not None and self.folds < 2:
            raise ValueError(f"--folds must be at least 2, got {self.folds}")
        if self.map_colour not in ("cluster", "centre"):
            raise ValueError(f"--map-colour must be cluster or centre, got {self.map_colour!r}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")


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


@dataclass
class SlidePlan:
    """The labelled slides (in bag order), their classes and the test splits, checked before any
    evaluation runs (:func:`plan_slide_classification`); ``skipped`` says why MIL cannot run at all."""

    labels_csv: Path
    info: dict
    slide_ids: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] | None = None
    patients: dict[str, str] | None = None  # slide_id -> patient_id of every row of slides.csv
    split_column: list[str | None] = field(default_factory=list)
    test_splits: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    skipped: str | None = None


def plan_slide_classification(labels_csv: Path, cfg: EvalConfig, bag_ids: list[str] | None = None) -> SlidePlan:
    """Read slides.csv, join it with the bags' slide ids (``None``: every labelled slide, as a study
    checks before extraction) and make every split of the MIL protocol; a ValueError naming the
    classes, their counts and what to change when the labels do not allow the settings of ``cfg``."""
    checked = read_slide_table(labels_csv)
    table = checked.labels
    ids = list(table) if bag_ids is None else list(bag_ids)
    labelled = [s for s in ids if s in table]
    unlabelled = sorted(s for s in ids if s not in table)
    missing_bags = sorted(set(table) - set(ids))
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
            c: sum(table[s][0] == c for s in labelled) for c in _sorted_classes([table[s][0] for s in labelled])
        },
    }
    plan = SlidePlan(labels_csv, info)
    if not labelled:
        plan.skipped = (
            f"no bag's slide_id appears in {labels_csv} ({len(ids)} bags, e.g. {unlabelled[0]!r}; "
            f"{len(table)} labelled slides, e.g. {next(iter(table), '')!r})"
        )
        return plan
    classes = _sorted_classes([table[s][0] for s in labelled])
    if len(classes) < 2:
        plan.skipped = f"the {len(labelled)} labelled bags all have class {classes[0]!r} in {labels_csv}; slide classification needs two"
        return plan
    plan.slide_ids, plan.classes, plan.patients = labelled, classes, checked.patients
    plan.labels = [classes.index(table[s][0]) for s in labelled]
    if checked.patients is not None:
        plan.groups = [checked.patients[s] for s in labelled]
        check_patients(plan.labels, plan.groups, labelled, classes)
        info["grouping"] = f"by patient: {len(set(plan.groups))} patients (patient_id column of {labels_csv})"
    else:
        info["grouping"] = f"by slide (no patient_id column in {labels_csv})"
    plan.split_column = [table[s][1] for s in labelled]
    given = [s is not None for s in plan.split_column]
    if not cfg.folds and any(given) and not all(given):
        raise ValueError(f"{labels_csv}: give a split for every labelled slide or for none")
    plan.test_splits = plan_splits(
        plan.labels,
        classes,
        groups=plan.groups,
        split_column=plan.split_column if all(given) and not cfg.folds else None,
        folds=cfg.folds,
        test_fraction=cfg.test_fraction,
        val_fraction=cfg.mil.val_fraction,
        seed=cfg.seed,
        source=str(labels_csv),
    )
    return plan


def _slide_classification(plan: SlidePlan, bags: list[FeatureBag], cfg: EvalConfig, out: Path, results: dict) -> None:
    labels_csv, info = plan.labels_csv, plan.info
    if plan.skipped:
        results["skipped"]["mil"] = plan.skipped
        return
    labelled = set(plan.slide_ids)
    classes = plan.classes
    ds = BagDataset(
        [torch.from_numpy(np.asarray(b.features)) for b in bags if b.slide_id in labelled],  # plan's order
        torch.tensor(plan.labels),
        list(plan.slide_ids),
        classes,
        plan.groups,
    )
    splits = plan.split_column
    if cfg.folds:
        _cross_validation(ds, bags, labels_csv, splits, plan.test_splits, cfg, out, info, results)
        return
    ((train_idx, test_idx),) = plan.test_splits
    if all(s is not None for s in splits):
        info["split"] = f"from the split column of {labels_csv}"
        if ds.groups is not None:
            _check_split_by_patient(ds, list(train_idx), list(test_idx), labels_csv)
    else:
        info["split"] = (
            f"no split column: stratified seeded (seed {cfg.seed}) {1 - cfg.test_fraction:.0%}/{cfg.test_fraction:.0%} "
            f"train/test split{' by patient' if ds.groups is not None else ''}, made once before any training"
        )
    train, test = ds.subset(train_idx), ds.subset(test_idx)
    info.update(
        train_slides=len(train),
        test_slides=len(test),
        class_counts_train={c: int((train.labels == i).sum()) for i, c in enumerate(classes)},
        class_counts_test={c: int((test.labels == i).sum()) for i, c in enumerate(classes)},
        test_slide_ids=list(test.slide_ids),
    )
    store = AttentionStore()
    mil = run_protocol(train, HeldOutTestSet(test), cfg.mil, cfg.mil_models, store.add)
    _mil_figures(mil, ds, bags, store, cfg, out)
    results["mil"] = {**info, **mil}


def _check_split_by_patient(ds: BagDataset, train_idx: list[int], test_idx: list[int], labels_csv: Path) -> None:
    """A split column must not put one patient's slides on both sides."""
    assert ds.groups is not None
    train_p = {ds.groups[i] for i in train_idx}
    both = sorted({ds.groups[i] for i in test_idx} & train_p)
    if both:
        shown = "; ".join(
            f"{p}: {', '.join(ds.slide_ids[i] for i in range(len(ds)) if ds.groups[i] == p)}" for p in both[:5]
        )
        raise ValueError(
            f"{labels_csv}: the split column puts {len(both)} patient(s) in both train and test ({shown}); "
            "move all of a patient's slides to one split, or drop the split column to let the split be made by patient"
        )


def _cross_validation(
    ds: BagDataset,
    bags: list[FeatureBag],
    labels_csv: Path,
    splits: list,
    folds: list[tuple[np.ndarray, np.ndarray]],
    cfg: EvalConfig,
    out: Path,
    info,
    results,
) -> None:
    import warnings

    if any(s is not None for s in splits):
        warnings.warn(f"--folds {cfg.folds}: the split column of {labels_csv} is ignored", stacklevel=3)
    info["split"] = (
        f"stratified {cfg.folds}-fold cross-validation (seed {cfg.seed}"
        f"{', by patient: StratifiedGroupKFold' if ds.groups is not None else ': StratifiedKFold'}), made once before "
        "any training; every slide is tested once, by a model selected without it"
        + (f"; the split column of {labels_csv} is ignored" if any(s is not None for s in splits) else "")
    )
    info.update(train_slides=len(ds), test_slides=len(ds), folds=cfg.folds)
    info["class_counts_train"] = info["class_counts_test"] = {
        c: int((ds.labels == i).sum()) for i, c in enumerate(ds.classes)
    }
    store = AttentionStore()
    mil = run_cross_validation(ds, folds, cfg.mil, cfg.mil_models, store.add)
    info["test_slide_ids"] = [s for f in mil["folds"] for s in f["test_slide_ids"]]
    _mil_figures(mil, ds, bags, store, cfg, out)
    results["mil"] = {**info, **mil}


class AttentionStore:
    """Test-slide attention of every (model, slide), one entry per seed (the protocol's ``attention_sink``)."""

    def __init__(self) -> None:
        self.scores: dict[str, dict[str, list[np.ndarray]]] = {}
        self.seeds: dict[str, list[int]] = {}

    def add(self, model: str, seed: int, slide_ids: list[str], attention: list[np.ndarray]) -> None:
        per_slide = self.scores.setdefault(model, {})
        for sid, a in zip(slide_ids, attention):
            per_slide.setdefault(sid, []).append(np.asarray(a, dtype=np.float32))
        if seed not in self.seeds.setdefault(model, []):
            self.seeds[model].append(seed)

    def save(self, out: Path) -> dict:
        """attention/<model>/<slide>.npy: (seeds, N) for one attention branch, (seeds, N, C) per class."""
        saved = {}
        for model, per_slide in self.scores.items():
            files = {}
            for sid, runs in per_slide.items():
                path = out / "attention" / model / f"{safe_name(sid)}.npy"
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, np.stack(runs))
                files[sid] = str(path.relative_to(out))
            saved[model] = {"seeds": self.seeds[model], "files": files}
        return saved


def _mil_figures(
    mil: dict, ds: BagDataset, bags: list[FeatureBag], store: AttentionStore, cfg: EvalConfig, out: Path
) -> None:
    """ROC PNGs, the saved attention and, for slides with coordinates, ABMIL attention heatmaps."""
    labels = {sid: ds.classes[int(y)] for sid, y in zip(ds.slide_ids, ds.labels)}
    classes = mil["classes"]
    for name, res in mil["models"].items():
        res["roc_png"] = plot_roc(name, res["runs"], classes, out / f"roc_{name}.png").name
    mil["attention"] = store.save(out)
    by_id = {b.slide_id: b for b in bags}
    maps = []
    for model in [m for m in ("abmil", "dsmil") if m in store.scores][:1]:
        # Slides of the last class first (for two classes: the positive ones), then the others.
        ranked = sorted(store.scores[model], key=lambda s: -mil["classes"].index(labels[s]))
        slides = [s for s in ranked if by_id[s].coords is not None][: cfg.attention_maps]
        for sid in slides:
            scores = np.stack(store.scores[model][sid]).mean(0)
            if scores.ndim == 2:  # DSMIL: the attention of the last class (binary: the positive one)
                scores = scores[:, -1]
            png = out / "attention" / f"{model}_{safe_name(sid)}.png"
            try:
                save_score_map(
                    png,
                    by_id[sid].coords,
                    scores,
                    {**by_id[sid].attrs, "slide_id": sid},
                    max_size=cfg.map_size,
                    title=f"{sid} ({labels[sid]}): {model} attention, mean of {len(store.scores[model][sid])} seed(s)",
                )
                maps.append({"model": model, "slide_id": sid, "png": str(png.relative_to(out))})
            except Exception as error:  # one slide's heatmap must not stop the report
                maps.append({"model": model, "slide_id": sid, "error": f"{type(error).__name__}: {error}"})
    mil["attention_maps"] = maps


def _patch_evaluations(
    table: PatchTable, bags: list[FeatureBag], patch_csv: Path, cfg: EvalConfig, results: dict, slide_csv=None
) -> None:
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
    knn_options = dict(query_chunk=cfg.knn_query_chunk, train_chunk=cfg.knn_train_chunk, device=cfg.device)
    centres = patch_centres(table, patch_csv, slide_csv)
    if centres is None:
        results["skipped"]["confounders"] = f"no {'/'.join(CENTRE_COLUMNS)} column in {patch_csv} or slides.csv"
    else:
        results["confounders"] = confounder_analysis(
            table, *centres, num_clusters=k_head, seed=cfg.seed, normalize=cfg.kmeans_normalize, **knn_options
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
    _patch_probe(table, tr, te, cfg, results)
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


def _probe_options(cfg: EvalConfig) -> dict:
    return dict(seeds=cfg.mil.seeds, cs=cfg.probe_cs, ordinal=cfg.ordinal, n_boot=cfg.mil.bootstrap)


def _patch_probe(table: PatchTable, tr: np.ndarray, te: np.ndarray, cfg: EvalConfig, results: dict) -> None:
    """The linear probe from the train to the test patches (:mod:`.probe`)."""
    if not cfg.probe:
        results["skipped"]["linear_probe_patch"] = "disabled"
        return
    classes = _sorted_classes(list(table.labels))
    y = np.asarray([classes.index(v) for v in table.labels])
    try:
        results["linear_probe_patch"] = linear_probe(
            table.features[tr], y[tr], table.features[te], y[te], classes, unit="patch", **_probe_options(cfg)
        )
    except ValueError as error:
        results["skipped"]["linear_probe_patch"] = str(error)


def _slide_metrics(plan: SlidePlan, bags: list[FeatureBag], cfg: EvalConfig, results: dict) -> None:
    """The field's metrics of the MIL runs and the linear probe on mean-pooled slide features."""
    add_field_metrics(results["mil"], ordinal=cfg.ordinal, n_boot=cfg.mil.bootstrap, seed=cfg.mil.bootstrap_seed)
    if not cfg.probe:
        results["skipped"]["linear_probe_slide"] = "disabled"
        return
    by_id = {b.slide_id: b for b in bags}
    try:
        results["linear_probe_slide"] = slide_probe(
            [by_id[s].features for s in plan.slide_ids],
            plan.labels,
            plan.slide_ids,
            plan.classes,
            plan.test_splits,
            groups=plan.groups,
            **_probe_options(cfg),
        )
    except ValueError as error:
        results["skipped"]["linear_probe_slide"] = str(error)


def _by_centre(with_coords: list[FeatureBag], parts: list, slide_csv, source: str, results: dict):
    """--map-colour centre: each cluster in the colour of its majority centre (:func:`.confounders.colour_by_centre`)."""
    found = None if slide_csv is None else read_centres(slide_csv, "slide")
    if found is None:
        results["skipped"]["centre_maps"] = (
            f"--map-colour centre needs a {'/'.join(CENTRE_COLUMNS)} column in slides.csv"
        )
        return parts, None, source
    painted, names, share = colour_by_centre(parts, [b.slide_id for b in with_coords], found[0])
    results["centre_of_clusters"] = {"majority_share": share, "centres": names}
    return painted, names, f"{source}, each cluster coloured by its majority centre ({found[1]} column of {slide_csv})"


def _cluster_maps(bags: list[FeatureBag], cfg: EvalConfig, out: Path, results: dict, slide_csv=None) -> None:
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
    names = None
    if cfg.map_colour == "centre":
        parts, names, source = _by_centre(with_coords, parts, slide_csv, source, results)
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
                        names=names,
                    ),
                }
            )
            maps[-1]["png"] = f"maps/{name}.png"
        except Exception as error:  # one slide's map must not stop the report
            failed.append({"slide_id": bag.slide_id, "error": f"{type(error).__name__}: {error}"})
    results["cluster_maps"] = {"clusters_from": source, "maps": maps, "failed": failed}


def _guard(
    features: Path, bags: list[FeatureBag], plan: SlidePlan | None, table: PatchTable | None, cfg: EvalConfig
) -> dict:
    """The leakage guard (:mod:`.leakage`) on every slide, patient and file the evaluation tests on."""
    slides, files = [], []
    if plan is not None and not plan.skipped:
        slides = test_slide_ids(plan.slide_ids, plan.test_splits)
        by_id = {b.slide_id: b for b in bags}
        files = [f for s in slides for f in bag_files(by_id[s])]
    if table is not None and table.split is not None:
        test = table.split == "test"
        slides += list(dict.fromkeys(table.slide_ids[test].tolist()))
        files += [f for f, t in zip(table.files, test) if t and f]
    return guard_pretrain_overlap(
        features,
        bags,
        allow=cfg.allow_pretrain_overlap,
        test_slides=slides,
        patients=None if plan is None else plan.patients,
        test_files=files,
    )


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
    bags, left_out = screen_bags(load_bags(features))
    # What the slide labels allow is checked before anything runs (a ValueError naming what to change).
    try:
        slide_plan = (
            None if labels is None else plan_slide_classification(Path(labels), cfg, [b.slide_id for b in bags])
        )
    except ValueError as error:
        if not left_out:
            raise
        names = ", ".join(f"{b['slide_id']} ({b['reason']})" for b in left_out[:5])
        raise ValueError(f"{error} ({len(left_out)} bag(s) were left out before: {names})") from None
    patch_table = None if patch_labels is None else join_patch_labels(bags, Path(patch_labels))
    overlap = _guard(features, bags, slide_plan, patch_table, cfg)
    results: dict[str, Any] = {
        "pretrain_overlap": overlap,
        "inputs": _summary(bags, features),
        "left_out_bags": {"count": len(left_out), "bags": left_out},
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
    if patch_table is not None:
        _patch_evaluations(patch_table, bags, Path(patch_labels), cfg, results, labels)
    else:
        results["skipped"]["clustering"] = results["skipped"]["knn"] = "no --patch-labels given"
    if slide_plan is not None:
        results["slide_labels"] = slide_plan.info
        _slide_classification(slide_plan, bags, cfg, out, results)
        if "mil" in results:
            _slide_metrics(slide_plan, bags, cfg, results)
    else:
        results["skipped"]["mil"] = "no --labels given"
    if cfg.maps:
        _cluster_maps(bags, cfg, out, results, labels)
    else:
        results["skipped"]["cluster_maps"] = "disabled"
    results = _json_safe(results)
    atomic_write_json(out / "report.json", results)
    atomic_write_text(out / "report.md", render_markdown(results))
    return results
