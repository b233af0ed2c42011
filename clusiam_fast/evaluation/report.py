"""Markdown rendering of the evaluation results (the same numbers as report.json)."""

from __future__ import annotations

from typing import Any

from .bag_checks import left_out_lines
from .bootstrap import format_ci
from .report_field import field_lines


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ms(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.4f} ± {d['std']:.4f}"


def _knn_ci(d: dict, key: str) -> str:
    ci = d.get(f"{key}_ci95")
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


def slide_label_lines(r: dict) -> list[str]:
    """What the slide labels covered, by class name, and why MIL did not run (report and console)."""
    sl = r.get("slide_labels")
    if not sl:
        return []
    counts = ", ".join(f"{c} ({n})" for c, n in sl["class_counts"].items()) or "none"
    lines = [
        f"Slide labels {sl['labels_file']}: {sl['labelled_slides']} bags labelled, classes {counts}.",
        f"{sl['unlabelled_bags']} bags have no label"
        + (f" (e.g. {', '.join(sl['unlabelled_bag_ids'][:5])})" if sl["unlabelled_bags"] else "")
        + f"; {sl['num_labels_without_bag']} labels have no bag"
        + (f" (e.g. {', '.join(sl['labels_without_bag'][:5])})" if sl["num_labels_without_bag"] else "")
        + ".",
    ]
    if sl.get("blank_label_lines"):
        lines.append(f"{len(sl['blank_label_lines'])} rows with a blank label were skipped as unlabelled.")
    if sl.get("duplicate_lines"):
        lines.append(f"{len(sl['duplicate_lines'])} rows repeating an earlier row were ignored.")
    if "mil" in r.get("skipped", {}):
        lines.append(f"MIL did not run: {r['skipped']['mil']}.")
    return lines


def _ci(summary: dict) -> str:
    return format_ci(summary.get("auc_ci"), 4)


def _ci_note(m: dict) -> str:
    ci = next((res["summary"].get("auc_ci") for res in m["models"].values() if res["summary"].get("auc_ci")), None)
    if not ci:
        return "No bootstrap CI (bootstrap 0)."
    return (
        f"macro AUC [{ci['level']:.0%} CI]: percentile bootstrap ({ci['n_boot']} replicates, stratified by class, "
        f"seed {m['config'].get('bootstrap_seed', 0)}) resampling test {ci['unit']}s ({ci['n_units']}); "
        "for several seeds, the CI of their mean AUC."
    )


def mil_lines(m: dict) -> list[str]:
    """The slide classification section: summary table with CIs, per fold / per seed tables, ROC figures."""
    classes = m["classes"]
    cfg = m["config"]
    folds = m.get("folds")
    lines = [
        "## Slide classification (paper Tables 2-4)",
        "",
        f"Classes (model output index: name): {', '.join(f'{i}: {c}' for i, c in enumerate(classes))}.",
    ]
    if folds:
        lines.append(
            f"{len(folds)}-fold cross-validation of {m['train_slides']} slides (class counts {m['class_counts_test']}); "
            f"split: {m['split']}; grouping: {m.get('grouping', 'by slide')}."
        )
    else:
        lines.append(
            f"{m['train_slides']} training slides (class counts {m['class_counts_train']}), {m['test_slides']} test slides "
            f"({m['class_counts_test']}); split: {m['split']}; grouping: {m.get('grouping', 'by slide')}."
        )
    lines += [
        f"Protocol: grid lr {list(cfg['lrs'])} x weight decay {list(cfg['weight_decays'])}, {cfg['epochs']} epochs ({cfg['warmup_epochs']} warm-up, then cosine), "
        f"optimiser {cfg['optimizer']}, batch {cfg['batch_size']} bags; stratified seeded {1 - cfg['val_fraction']:.0%}/{cfg['val_fraction']:.0%} train/validation split "
        f"of the training slides{' of each fold' if folds else ''}; best validation checkpoint (by {cfg['select_metric']}) evaluated once on the test slides; "
        f"seeds {list(cfg['seeds'])}; mean ± sample std over seeds"
        + (" of the pooled out-of-fold predictions (each slide scored by the fold that tested it)." if folds else "."),
        _ci_note(m),
        "",
        *_table(
            ["Model", "Accuracy"]
            + [f"AUC ({c})" for c in classes]
            + ["macro AUC", "macro AUC [95% CI]"]
            + (["macro AUC over folds"] if folds else []),
            [
                [name, _ms(res["summary"]["accuracy"])]
                + [_ms(res["summary"]["auc"][c]) for c in classes]
                + [_ms(res["summary"]["auc_macro"]), _ci(res["summary"])]
                + ([_ms(res["fold_summary"]["auc_macro"])] if folds else [])
                for name, res in m["models"].items()
            ],
        ),
        "",
    ]
    per_fold = folds or [{"fold": "-", "models": m["models"]}]
    lines += [
        "Per seed (selection made on validation data only):"
        if not folds
        else "Per fold and seed (selection made on the fold's validation data only):",
        "",
        *_table(
            ["Model"]
            + (["fold"] if folds else [])
            + ["seed", "lr", "weight decay", "epoch", "val macro AUC", "test accuracy", "test macro AUC [95% CI]"],
            [
                [name]
                + ([fold["fold"]] if folds else [])
                + [
                    run["seed"],
                    run["lr"],
                    run["weight_decay"],
                    run["epoch"],
                    _f(run["val"]["auc_macro"]),
                    _f(run["test"]["metrics"]["accuracy"]),
                    _ci(run["test"]) if run["test"].get("auc_ci") else _f(run["test"]["metrics"]["auc_macro"]),
                ]
                for name in m["models"]
                for fold in per_fold
                for run in fold["models"][name]["runs"]
            ],
        ),
        "",
    ]
    if folds:
        lines += [
            "Per fold (mean over seeds):",
            "",
            *_table(
                ["Model", "fold", "test slides", "accuracy", "macro AUC", "macro AUC [95% CI]"],
                [
                    [
                        name,
                        fold["fold"],
                        fold["test_slides"],
                        _ms(fold["models"][name]["summary"]["accuracy"]),
                        _ms(fold["models"][name]["summary"]["auc_macro"]),
                        _ci(fold["models"][name]["summary"]),
                    ]
                    for name in m["models"]
                    for fold in folds
                ],
            ),
            "",
        ]
    lines += [f"![ROC {name}]({res['roc_png']})" for name, res in m["models"].items() if "roc_png" in res] + [""]
    att = m.get("attention") or {}
    if att:
        lines += [
            "Attention of every test slide: "
            + ", ".join(f"`attention/{model}/<slide>.npy` ({len(a['files'])} slides)" for model, a in att.items())
            + "; one row per seed (ABMIL: (seeds, patches); DSMIL: (seeds, patches, classes)).",
            "",
        ]
    for mp in m.get("attention_maps", []):
        lines += (
            [f"![{mp['model']} attention {mp['slide_id']}]({mp['png']})", ""]
            if "png" in mp
            else [f"- {mp['model']} attention map of {mp['slide_id']} failed: {mp['error']}", ""]
        )
    return lines


def render_markdown(r: dict) -> str:
    """The report: inputs, Table 1 (clustering), KNN, Tables 2-4 (MIL), figures, what was skipped."""
    inp = r["inputs"]
    overlap = r.get("pretrain_overlap") or {}
    lines = [
        *([f"**{overlap['statement']}**", ""] if overlap.get("allowed") else []),
        "# clusiam_fast evaluation report",
        "",
        *(
            [f"Pre-training data: {overlap['statement']}.", ""]
            if overlap.get("statement") and not overlap.get("allowed")
            else []
        ),
        f"Features: `{inp['features']}` ({inp['method'] or 'unknown method'}, {inp['arch'] or '?'}; checkpoint `{inp['checkpoint']}`)",
        "",
        *_table(
            ["slides", "patches", "feature dim", "assigner K", "slides with coordinates", "stored dtype"],
            [
                [
                    inp["num_slides"],
                    inp["num_patches"],
                    inp["feature_dim"],
                    inp["num_clusters"] or "none",
                    inp["with_coords"],
                    inp["dtype"],
                ]
            ],
        ),
        "",
    ]

    left_out = r.get("left_out_bags") or {}
    if left_out.get("count"):
        lines += [
            f"## Left-out bags ({left_out['count']})",
            "",
            *(f"- {line}" for line in left_out_lines(left_out["bags"])),
            "",
        ]
    if r.get("slide_labels"):
        lines += ["## Slide labels", "", *(f"- {line}" for line in slide_label_lines(r)), ""]
    if "clustering" in r:
        pl = r["patch_labels"]
        lines += [
            "## Clustering vs patch labels (paper Table 1)",
            "",
            f"{pl['labelled_patches']} labelled patches, classes {pl['classes']}; {pl['unlabelled_patches']} patches without a label.",
            "",
            *_table(
                ["Method", "K", "Clusters used", "Rand index", "Adjusted Rand index", "NMI", "Implementation"],
                [
                    [
                        c["method"],
                        c["k"],
                        c["clusters_used"],
                        _f(c["rand_index"]),
                        _f(c["adjusted_rand_index"]),
                        _f(c["nmi"]),
                        c["implementation"],
                    ]
                    for c in r["clustering"]
                ],
            ),
            "",
        ]
    if "knn" in r:
        k = r["knn"]
        lines += [
            "## Patch KNN (top-1 cosine, train -> test)",
            "",
            *_table(
                ["train patches", "test patches", "macro F1", "accuracy"],
                [
                    [
                        k["n_train"],
                        k["n_test"],
                        _f(k["f1_macro"]) + _knn_ci(k, "f1_macro"),
                        _f(k["accuracy"]) + _knn_ci(k, "accuracy"),
                    ]
                ],
            ),
            "",
        ]
        if k.get("bootstrap"):
            b = k["bootstrap"]
            lines += [f"[a, b]: {b['level']:.0%} bootstrap interval ({b['method']}, {b['resamples']} resamples).", ""]
    lines += field_lines(r)
    if "mil" in r:
        lines += mil_lines(r["mil"])
    if "cluster_sizes" in r:
        lines += [
            "## Cluster sizes",
            "",
            f"{r['cluster_sizes']['clusters_used']} clusters used.",
            "",
            f"![cluster sizes]({r['cluster_sizes']['png']})",
            "",
        ]
    if "cluster_maps" in r:
        cm = r["cluster_maps"]
        lines += ["## Cluster maps", "", f"Clusters from: {cm['clusters_from']}.", ""]
        lines += [
            f"### {mp['slide_id']}\n\n{mp['patches']} patches, {mp['clusters']} clusters, thumbnail from {mp['thumbnail']}.\n\n![{mp['slide_id']}]({mp['png']})\n"
            for mp in cm["maps"]
        ]
        lines += [f"- map of {f['slide_id']} failed: {f['error']}" for f in cm["failed"]] + [""]
    if r.get("skipped"):
        lines += ["## Not run", ""] + [f"- {k}: {v}" for k, v in r["skipped"].items()] + [""]
    lines += ["## Implementations", ""] + [f"- {k}: {v}" for k, v in r["implementations"].items()] + [""]
    return "\n".join(lines)
