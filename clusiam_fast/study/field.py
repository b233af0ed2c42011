"""The study's columns of the field's benchmarks: balanced accuracy with its CI, linear-probe AUC,
the clustering score against the centre, and paired comparisons against SimSiam and random init
(:func:`clusiam_fast.evaluation.paired.paired_bootstrap` on the test slides both were scored on)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluation.paired import paired_bootstrap

REFERENCES = ("simsiam", "random_init")  # methods every other is compared with, when the study has them


def _predictions(rep: dict) -> dict[str, dict]:
    """task -> {"ids", "labels", "runs", "groups"}: the test predictions of each MIL model and the slide probe."""
    tasks = {}
    for model, res in (rep.get("mil") or {}).get("models", {}).items():
        tests = [r["test"] for r in res.get("runs", [])]
        if tests:
            tasks[f"MIL {model}"] = {
                "ids": tests[0]["slide_ids"],
                "labels": tests[0]["labels"],
                "groups": tests[0].get("patient_ids"),
                "runs": [t["probs"] for t in tests],
            }
    probe = rep.get("linear_probe_slide") or {}
    if probe.get("test_ids") and all("probs" in r["test"] for r in probe.get("runs", [])):
        tests = [r["test"] for r in probe["runs"]]
        tasks["linear probe (slides)"] = {
            "ids": probe["test_ids"],
            "labels": tests[0]["labels"],
            "groups": None,
            "runs": [t["probs"] for t in tests],
        }
    return tasks


def _score(rows: list[dict] | None, method: str) -> dict | None:
    row = next((r for r in rows or [] if r["method"].startswith(method)), None)
    return None if row is None else {k: row.get(k) for k in ("ari_label", "ari_centre", "clustering_score")}


def field_result(rep: dict) -> dict[str, Any]:
    """One method's field columns from its evaluation report (``_predictions`` is dropped before writing)."""
    out: dict[str, Any] = {"field": {}}
    for model, res in (rep.get("mil") or {}).get("models", {}).items():
        f = res.get("field")
        if f:
            out["field"][f"MIL {model}"] = {
                "balanced_accuracy": f["balanced_accuracy"].get("mean"),
                "balanced_accuracy_ci95": f.get("balanced_accuracy_ci"),
                "auc_ovr_macro": f["auc_ovr_macro"].get("mean"),
            }
    for key, name in (
        ("linear_probe_slide", "linear probe (slides)"),
        ("linear_probe_patch", "linear probe (patches)"),
    ):
        s = (rep.get(key) or {}).get("summary")
        if s:
            out["field"][name] = {
                "balanced_accuracy": s["balanced_accuracy"].get("mean"),
                "balanced_accuracy_ci95": s.get("balanced_accuracy_ci"),
                "auc_ovr_macro": s["auc_ovr_macro"].get("mean"),
            }
    conf = rep.get("confounders") or {}
    out["clustering_score"] = {
        "assigner": _score(conf.get("rows"), "assigner"),
        "kmeans": _score(conf.get("rows"), "K-means"),
        "skipped": conf.get("skipped") or (rep.get("skipped") or {}).get("confounders"),
    }
    out["_predictions"] = _predictions(rep)
    return out


def paired_comparisons(rows: list[dict], n_boot: int = 1000) -> list[dict]:
    """Every method against each reference (SimSiam, random init) on every task both were tested on."""
    out = []
    for ref_method in REFERENCES:
        ref = next((r for r in rows if r["method"] == ref_method and r.get("_predictions")), None)
        if ref is None:
            continue
        for row in rows:
            if row is ref:
                continue
            for task, mine in (row.get("_predictions") or {}).items():
                theirs = ref["_predictions"].get(task)
                if theirs is None:
                    continue
                entry = {"method": row["name"], "reference": ref["name"], "task": task}
                if list(mine["ids"]) != list(theirs["ids"]):
                    entry["skipped"] = "the two methods were tested on different slides"
                    out.append(entry)
                    continue
                for metric in ("auc", "balanced_accuracy"):
                    entry[metric] = paired_bootstrap(
                        mine["labels"],
                        [np.asarray(p) for p in mine["runs"]],
                        [np.asarray(p) for p in theirs["runs"]],
                        metric=metric,
                        groups=mine.get("groups"),
                        n_boot=n_boot,
                    )
                out.append(entry)
    return out


def _ci(value: float | None, ci: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _diff(d: dict | None) -> str:
    return "n/a" if not d else f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (p {d['p_value']:.2f})"


def field_lines(study: dict) -> list[str]:
    """The markdown of the field's columns and of the paired comparisons."""
    rows = study["methods"]
    tasks = sorted({t for r in rows for t in r.get("field", {})}, key=lambda t: (not t.startswith("MIL"), t))
    if not tasks and not study.get("paired"):
        return []
    header = ["Method", *(f"{t}: balanced accuracy [95% CI]" for t in tasks)]
    header += [f"{t}: AUC" for t in tasks if t.startswith("linear probe")]
    header += ["clustering score (assigner / K-means)"]
    lines = ["## As the field's benchmarks report it (eva, Patho-Bench, PathoROB)", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        f = r.get("field", {})
        cells = [
            r["name"],
            *(_ci(f.get(t, {}).get("balanced_accuracy"), f.get(t, {}).get("balanced_accuracy_ci95")) for t in tasks),
        ]
        cells += [_ci(f.get(t, {}).get("auc_ovr_macro"), None) for t in tasks if t.startswith("linear probe")]
        cs = r.get("clustering_score") or {}
        scores = [(cs.get(p) or {}).get("clustering_score") for p in ("assigner", "kmeans")]
        cells.append(" / ".join("n/a" if s is None else f"{s:.3f}" for s in scores))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    skipped = next(
        (r["clustering_score"]["skipped"] for r in rows if (r.get("clustering_score") or {}).get("skipped")), None
    )
    lines += [
        "",
        "Clustering score = ARI(clusters, label) - ARI(clusters, centre) (PathoROB); below 0: the clusters follow the centre.",
    ]
    following = [
        f"{r['name']} ({part})"
        for r in rows
        for part in ("assigner", "kmeans")
        if (((r.get("clustering_score") or {}).get(part) or {}).get("clustering_score") or 0) < 0
    ]
    if following:
        lines += [f"**Clusters that follow the centre more than the class: {', '.join(following)}.**"]
    if skipped:
        lines += [f"Clustering score not computed: {skipped}."]
    lines += [""]
    if study.get("paired"):
        lines += ["## Paired comparisons (paired bootstrap on the same test slides)", ""]
        lines += [
            "| Method | against | task | Δ macro AUC [95% CI] | Δ balanced accuracy [95% CI] |",
            "|---|---|---|---|---|",
        ]
        for p in study["paired"]:
            if "skipped" in p:
                lines.append(f"| {p['method']} | {p['reference']} | {p['task']} | {p['skipped']} | |")
            else:
                lines.append(
                    f"| {p['method']} | {p['reference']} | {p['task']} | {_diff(p['auc'])} | {_diff(p['balanced_accuracy'])} |"
                )
        lines += [
            "",
            "Δ = method - reference, mean over seeds, on one resample of the test slides per replicate; p: two-sided bootstrap p-value.",
            "",
        ]
    return lines
