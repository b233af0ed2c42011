"""The comparison report of a study: ``report.json`` (every number), ``report.md`` and ``study.png``.

Per method: top-1 KNN macro F1 (with the bootstrap 95 % interval of the evaluation),
assigner and K-means against the patch labels (Rand index, ARI; paper Table 1), MIL
test AUC per MIL model (paper Tables 2-4), and the training monitors over the steps
(each run's ``log.csv`` / ``steps.csv``; every numeric column found is drawn, none is
hard-coded, paper Figure 4).

The evaluation reports are read generically: an interval is shown when the numbers come
with one (``<metric>_ci95``, or ``ci95`` / ``ci`` / ``ci_low`` + ``ci_high`` inside a
metric's summary), else the error is the standard deviation over the MIL seeds, and the
report says which.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_path, atomic_write_json, atomic_write_text
from .field import field_lines, field_result, paired_comparisons

NOT_MONITORS = {
    "epoch",
    "step",
    "lr",
    "images_per_s",
    "mfu",
    "memory_peak_gib",
    "skipped_images",
    "epoch_time_s",
    "partial",
}


def interval(parent: dict | None, key: str) -> tuple[float, float] | None:
    """The confidence interval of ``parent[key]`` when the report gives one, else None."""
    if not isinstance(parent, dict):
        return None
    for name in (f"{key}_ci95", f"{key}_ci"):
        if _pair(parent.get(name)):
            return tuple(parent[name])
    value = parent.get(key)
    if isinstance(value, dict):
        for name in ("ci95", "ci", "bootstrap_ci95"):
            if _pair(value.get(name)):
                return tuple(value[name])
        for lo, hi in (("ci_low", "ci_high"), ("ci95_low", "ci95_high"), ("low", "high")):
            if isinstance(value.get(lo), (int, float)) and isinstance(value.get(hi), (int, float)):
                return value[lo], value[hi]
    return None


def _pair(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def monitors(train_dir: Path) -> dict[str, dict[str, list[float]]]:
    """``{column: {"step": [...], "value": [...], "from": file}}``: steps.csv where it has the column, else log.csv."""
    found: dict[str, dict[str, Any]] = {}
    epochs = _read_csv(train_dir / "log.csv")
    # a column the epoch log leaves blank does not apply to the method (cluster_loss of SimSiam)
    blank = {c for c in (epochs[0] if epochs else {}) if all(_number(r.get(c)) is None for r in epochs)}
    for name in ("steps.csv", "log.csv"):
        rows = _read_csv(train_dir / name)
        for column in rows[0].keys() if rows else []:
            if column in NOT_MONITORS or column in found or column in blank:
                continue
            points = [(_number(r.get("step")), _number(r.get(column))) for r in rows]
            points = [(s, v) for s, v in points if s is not None and v is not None]
            if points:
                found[column] = {"step": [p[0] for p in points], "value": [p[1] for p in points], "from": name}
    return found


def _clustering(rows: list[dict]) -> dict[str, dict]:
    by = {r["method"]: r for r in rows}
    out = {}
    if "assigner (argmax)" in by:
        out["assigner"] = by["assigner (argmax)"]
    kmeans = by.get("K-means (same K)") or by.get("K-means") or by.get("K-means (K = classes)")
    if kmeans:
        out["kmeans"] = kmeans
    return {
        k: {f: v.get(f) for f in ("method", "k", "clusters_used", "rand_index", "adjusted_rand_index", "nmi")}
        for k, v in out.items()
    }


def method_result(name: str, method: str, folder: Path, records: list[dict]) -> dict[str, Any]:
    """One method's row of the comparison, from its run folder."""
    row: dict[str, Any] = {"name": name, "method": method, "steps": {r["step"]: r["status"] for r in records}}
    row["failed"] = [r for r in records if r["status"] == "failed"]
    report_path = folder / "eval" / "report.json"
    if report_path.is_file():
        rep = json.loads(report_path.read_text())
        row["report"] = str(report_path)
        if "knn" in rep:
            knn = rep["knn"]
            row["knn"] = {
                "f1_macro": knn.get("f1_macro"),
                "f1_macro_ci95": interval(knn, "f1_macro"),
                "accuracy": knn.get("accuracy"),
                "n_train": knn.get("n_train"),
                "n_test": knn.get("n_test"),
            }
        if "clustering" in rep:
            row["clustering"] = _clustering(rep["clustering"])
        if "mil" in rep:
            row["mil"] = {}
            for model, res in rep["mil"]["models"].items():
                summary = res["summary"]
                auc = summary["auc_macro"]
                row["mil"][model] = {
                    "auc_macro": auc.get("mean"),
                    "auc_macro_std": auc.get("std"),
                    "auc_macro_ci95": interval(summary, "auc_macro") or interval(summary, "auc_ci"),
                    "accuracy": summary["accuracy"].get("mean"),
                    "seeds": len(res.get("runs", [])),
                }
        row["skipped"] = rep.get("skipped", {})
        row.update(field_result(rep))
    mons = monitors(folder / "train")
    row["monitors"] = mons
    row["final_monitors"] = {k: v["value"][-1] for k, v in mons.items()}
    log = _read_csv(folder / "train" / "log.csv")
    row["trained_steps"] = int(float(log[-1]["step"])) if log else 0
    steps = _read_csv(folder / "train" / "steps.csv")
    if steps:
        row["trained_steps"] = max(row["trained_steps"], int(float(steps[-1]["step"])))
    return row


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _with_error(value: float | None, ci: Any, sd: float | None = None) -> str:
    if value is None:
        return "n/a"
    if ci:
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    if sd is not None:
        return f"{value:.3f} ± {sd:.3f}"
    return f"{value:.3f}"


def _mil_models(rows: list[dict]) -> list[str]:
    return sorted({m for r in rows for m in r.get("mil", {})})


def render_markdown(study: dict) -> str:
    rows, mil_models = study["methods"], _mil_models(study["methods"])
    lines = [
        "# clusiam_fast study",
        "",
        f"Config `{study['config']}`; every method trained with the same data, seed and budget "
        f"(`{' '.join(study['budget_flags'])}`), evaluated on the same patches and bags.",
        "",
        f"Training data: {_describe(study['data'].get('train'))}.",
        "",
        f"Evaluation sets: {_describe(study['data'].get('eval'))}.",
        "",
        "## Results",
        "",
    ]
    header = ["Method", "trained as", "steps", "KNN macro F1 [95% CI]", "assigner RI", "assigner ARI"]
    header += ["K-means RI", "K-means ARI"] + [f"MIL AUC {m}" for m in mil_models]
    table = []
    for r in rows:
        cl = r.get("clustering", {})
        knn = r.get("knn", {})
        cells = [r["name"], r["method"], r["trained_steps"], _with_error(knn.get("f1_macro"), knn.get("f1_macro_ci95"))]
        cells += [_f(cl.get("assigner", {}).get(k)) for k in ("rand_index", "adjusted_rand_index")]
        cells += [_f(cl.get("kmeans", {}).get(k)) for k in ("rand_index", "adjusted_rand_index")]
        for m in mil_models:
            mil = r.get("mil", {}).get(m, {})
            cells.append(_with_error(mil.get("auc_macro"), mil.get("auc_macro_ci95"), mil.get("auc_macro_std")))
        table.append(cells)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in cells) + " |" for cells in table]
    lines += [
        "",
        "KNN: top-1 cosine, train -> test patches; [a, b] is the bootstrap 95% interval over test patches. "
        "RI / ARI: the assigner's argmax clusters (CluSiam) and K-means with the same K (else K = classes) "
        "against the patch labels. MIL: test macro AUC, [a, b] an interval where the evaluation gives one, "
        "else ± the standard deviation over the MIL seeds.",
        "",
    ]
    lines += _separation_lines(rows)
    lines += field_lines(study)
    mons = _monitor_order({k for r in rows for k in r["final_monitors"]})
    if mons:
        lines += ["## Training monitors (last value)", ""]
        lines += ["| Method | " + " | ".join(mons) + " |", "|" + "---|" * (len(mons) + 1)]
        lines += [
            "| " + " | ".join([r["name"], *(_f(r["final_monitors"].get(m), 4) for m in mons)]) + " |" for r in rows
        ]
        lines += [""]
    lines += [f"![study]({study['png']})", "", "## Steps", ""]
    lines += ["| Method | step | status | seconds | log |", "|---|---|---|---|---|"]
    lines += [
        f"| {s['name']} | {s['step']} | {s['status']} | {s.get('seconds', '')} | `{s['log']}` |" for s in study["steps"]
    ]
    failed = [s for s in study["steps"] if s["status"] == "failed"]
    for s in failed:
        lines += ["", f"### {s['name']}: {s['step']} failed", "", "```", s.get("error", ""), "```"]
    lines += [""]
    return "\n".join(lines)


def _separation_lines(rows: list[dict]) -> list[str]:
    """Which methods the KNN intervals tell apart from the untrained baseline (when the study has one)."""
    base = next((r for r in rows if r["method"] == "random_init" and r.get("knn", {}).get("f1_macro_ci95")), None)
    if base is None:
        return []
    lo_b, hi_b = base["knn"]["f1_macro_ci95"]
    lines = [f"## Did training learn anything? (KNN F1 vs the untrained `{base['name']}`)", ""]
    for r in rows:
        ci = r.get("knn", {}).get("f1_macro_ci95")
        if r is base or not ci:
            continue
        delta = r["knn"]["f1_macro"] - base["knn"]["f1_macro"]
        if ci[0] > hi_b:
            verdict = "better: the 95% intervals do not overlap"
        elif ci[1] < lo_b:
            verdict = "worse: the 95% intervals do not overlap"
        else:
            verdict = "not separable at this size: the 95% intervals overlap"
        lines.append(f"- {r['name']}: {delta:+.3f} macro F1, {verdict}.")
    return lines + [""]


FIRST_MONITORS = (
    "loss",
    "inv_loss",
    "cluster_loss",
    "backbone_std",
    "backbone_rankme",
    "assigner_entropy",
    "projection_std",
)


def _monitor_order(names: set[str]) -> list[str]:
    return [n for n in FIRST_MONITORS if n in names] + sorted(names - set(FIRST_MONITORS))


def _describe(info: dict | None) -> str:
    return "; ".join(f"{k} {v}" for k, v in (info or {}).items()) or "n/a"


def plot_study(rows: list[dict], path: Path) -> Path:
    """Bars (KNN F1, RI, ARI, MIL AUC with their intervals) over monitor curves, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mil_models = _mil_models(rows)
    mons = _monitor_order({k for r in rows for k in r["monitors"]})
    ncol = 3 + len(mil_models)
    mon_rows = math.ceil(len(mons) / ncol) if mons else 0
    fig, axes = plt.subplots(1 + mon_rows, ncol, figsize=(3.2 * ncol, 2.8 * (1 + mon_rows)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = [r["name"] for r in rows]
    x = list(range(len(rows)))

    def bars(ax, values, errors, title, hatch=None, offset=0.0, width=0.8, label=None):
        heights = [v if v is not None else 0.0 for v in values]
        yerr = [[max(h - e[0], 0) if e else 0 for h, e in zip(heights, errors)]]
        yerr.append([max(e[1] - h, 0) if e else 0 for h, e in zip(heights, errors)])
        ax.bar(
            [i + offset for i in x],
            heights,
            width,
            yerr=yerr,
            capsize=3,
            color=[colours[i % len(colours)] for i in x],
            hatch=hatch,
            edgecolor="black",
            linewidth=0.5,
            label=label,
        )
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)

    knn = [r.get("knn", {}) for r in rows]
    bars(axes[0, 0], [k.get("f1_macro") for k in knn], [k.get("f1_macro_ci95") for k in knn], "KNN macro F1 (95% CI)")
    for col, (metric, title) in enumerate((("rand_index", "Rand index"), ("adjusted_rand_index", "ARI")), start=1):
        ax = axes[0, col]
        for part, hatch, offset in (("assigner", None, -0.2), ("kmeans", "//", 0.2)):
            vals = [r.get("clustering", {}).get(part, {}).get(metric) for r in rows]
            bars(ax, vals, [None] * len(rows), f"{title}: assigner | K-means (//)", hatch, offset, 0.4)
    for col, model in enumerate(mil_models, start=3):
        mil = [r.get("mil", {}).get(model, {}) for r in rows]
        errors = []
        for m in mil:
            ci, sd, v = m.get("auc_macro_ci95"), m.get("auc_macro_std"), m.get("auc_macro")
            errors.append(ci if ci else ((v - sd, v + sd) if v is not None and sd is not None else None))
        kind = "CI" if any(m.get("auc_macro_ci95") for m in mil) else "± sd over seeds"
        bars(axes[0, col], [m.get("auc_macro") for m in mil], errors, f"MIL AUC {model} ({kind})")
        axes[0, col].set_ylim(0, 1.05)
    for i, name in enumerate(mons):
        ax = axes[1 + i // ncol, i % ncol]
        for j, r in enumerate(rows):
            series = r["monitors"].get(name)
            if series:
                ax.plot(
                    series["step"],
                    series["value"],
                    marker="." if len(series["step"]) < 20 else None,
                    color=colours[j % len(colours)],
                    label=r["name"],
                    linewidth=1,
                )
        ax.set_title(f"{name} ({next(r['monitors'][name]['from'] for r in rows if name in r['monitors'])})", fontsize=9)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(mons), mon_rows * ncol):
        axes[1 + k // ncol, k % ncol].axis("off")
    if mons:
        axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path


def write_report(out: Path, study: dict) -> dict:
    """Write report.json, study.png and report.md into ``out``; returns the JSON."""
    study["paired"] = paired_comparisons(study["methods"])
    for row in study["methods"]:
        row.pop("_predictions", None)  # the test predictions stay in each method's evaluation report
    study["png"] = plot_study(study["methods"], out / "study.png").name
    atomic_write_json(out / "report.json", study)
    atomic_write_text(out / "report.md", render_markdown(study))
    return study
