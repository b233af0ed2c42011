"""Markdown of the numbers the field's benchmarks report: clusters against the centre (PathoROB),
the linear probe and the headline metrics of eva and Patho-Bench."""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in r) + " |" for r in rows
    ]


def confounder_lines(r: dict) -> list[str]:
    """Clusters against the label and against the centre, the clustering score and the cross-centre KNN."""
    c = r.get("confounders")
    if not c:
        return []
    centres = ", ".join(f"{k} ({n})" for k, n in c["centres"].items())
    lines = ["## Clusters against the centre (PathoROB clustering score)", ""]
    lines += [f"{c['patches']} patches with a centre ({c['centres_from']}): {centres}.", ""]
    if c.get("skipped"):
        return lines + [f"Not computed: {c['skipped']}.", ""]
    if c["follows_centre"]:
        lines += [f"**Clusters follow the centre more than the class: {', '.join(c['follows_centre'])}.**", ""]
    lines += _table(
        ["Method", "K", "ARI label", "RI label", "ARI centre", "RI centre", "clustering score"],
        [
            [
                row["method"],
                row["k"],
                _f(row["ari_label"]),
                _f(row["ri_label"]),
                _f(row["ari_centre"]),
                _f(row["ri_centre"]),
                _f(row["clustering_score"]),
            ]
            for row in c["rows"]
        ],
    )
    lines += [
        "",
        "clustering score = ARI(clusters, label) - ARI(clusters, centre); below 0: clusters follow the centre.",
        "",
    ]
    knn = c.get("knn_other_centre")
    if knn and "skipped" not in knn:
        lines += [
            f"Patch KNN with the neighbour from another centre: macro F1 {_f(knn['f1_macro'])}, "
            f"accuracy {_f(knn['accuracy'])} ({knn['n_test']} test patches).",
            "",
        ]
    elif knn:
        lines += [f"Cross-centre KNN not computed: {knn['skipped']}.", ""]
    return lines


def _ms(d: dict | None) -> str:
    return "n/a" if not d or d.get("mean") is None else f"{d['mean']:.4f} ± {d['std']:.4f}"


def _bacc(s: dict) -> str:
    ci = s.get("balanced_accuracy_ci")
    mean = s["balanced_accuracy"].get("mean")
    return "n/a" if mean is None else f"{mean:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def task_rows(r: dict) -> list[tuple[str, dict]]:
    """(name, summary) of every task scored with the field's metrics: MIL models, slide and patch probes."""
    rows = [
        (f"MIL {name}", res["field"]) for name, res in (r.get("mil") or {}).get("models", {}).items() if "field" in res
    ]
    if "linear_probe_slide" in r:
        rows.append(("linear probe, mean-pooled slides", r["linear_probe_slide"]["summary"]))
    if "linear_probe_patch" in r:
        rows.append(("linear probe, patches", r["linear_probe_patch"]["summary"]))
    return rows


def metric_lines(r: dict) -> list[str]:
    """Balanced accuracy (CI), macro OvR / OvO AUC, QWK and per-class AUC CIs of every task."""
    rows = task_rows(r)
    if not rows:
        return []
    ordinal = any("qwk" in s for _, s in rows)
    header = [
        "Task",
        "balanced accuracy [95% CI]",
        "macro OvR AUC",
        "macro OvO AUC",
        *(["QWK"] if ordinal else []),
        "seeds",
    ]
    table = [
        [
            name,
            _bacc(s),
            _ms(s["auc_ovr_macro"]),
            _ms(s["auc_ovo_macro"]),
            *([_ms(s.get("qwk"))] if ordinal else []),
            s["seeds"],
        ]
        for name, s in rows
    ]
    lines = ["## Metrics as eva and Patho-Bench report them", "", *_table(header, table), ""]
    lines += [
        "Mean ± std over seeds; [a, b]: percentile bootstrap CI of the mean over seeds (test units resampled within class).",
        "",
    ]
    for name, s in rows:
        per_class = s.get("auc_ci_per_class")
        if per_class:
            shown = "; ".join(f"{c} {v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" for c, v in per_class.items())
            lines.append(f"- {name}, one-vs-rest AUC per class: {shown}")
    return lines + [""]


def field_lines(r: dict) -> list[str]:
    """Every section of this module that ``r`` has numbers for."""
    return confounder_lines(r) + metric_lines(r)
