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


def field_lines(r: dict) -> list[str]:
    """Every section of this module that ``r`` has numbers for."""
    return confounder_lines(r)
