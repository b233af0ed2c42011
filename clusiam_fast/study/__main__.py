"""``python -m clusiam_fast.study CONFIG.yaml [--out DIR]``: train, extract and evaluate several methods alike.

Examples::

    python -m clusiam_fast.study benchmarks/study_pcam.yaml --out runs/study_pcam
    python -m clusiam_fast.study study.yaml              # again after a crash / Ctrl-C: continues where it stopped
    python -m clusiam_fast.study study.yaml --report-only

The config (YAML; schema in ``clusiam_fast/study/config.py``, example in
``benchmarks/study_pcam.yaml``) is checked completely before anything runs. Each step
(train, extract, evaluate of each method; training as a subprocess) writes its output
to ``OUT/runs/<name>/<step>.log`` and is skipped when it already finished with the same
settings; a killed training continues from its checkpoint.

Exit status: 0 every step done, 1 a step failed (the report lists it with its log;
the other methods still ran), 2 a bad config (one line on stderr naming the key),
130 interrupted (Ctrl-C / SIGTERM; run the same command to continue).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ..cli.errors import PARTIAL, run_verb, verb_parser

EXAMPLES = """\
  clusiam-fast study benchmarks/study_pcam.yaml --out runs/study_pcam
  clusiam-fast study study.yaml               # again after a crash / Ctrl-C: continues where it stopped
  clusiam-fast study study.yaml --report-only
"""


def build_parser() -> argparse.ArgumentParser:
    p = verb_parser(
        "study",
        "Compare self-supervised methods on your data: the same data, seed and budget for each, "
        "the same evaluation, one report (report.md, report.json, study.png).",
        EXAMPLES,
    )
    p.add_argument("config", type=Path, help="study config (YAML)")
    p.add_argument("--out", type=Path, default=None, help="study folder (default: out: of the config)")
    p.add_argument(
        "--show-output",
        action="store_true",
        help="stream each step's console output (progress bars) instead of writing it to its .log",
    )
    p.add_argument("--report-only", action="store_true", help="run nothing; rebuild the report from what is done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _interrupt(signum, frame):  # SIGTERM as Ctrl-C: the running step is stopped cleanly
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 every step done, 1 a step failed, 2 bad input, 130 interrupted)."""
    return run_verb("study", lambda: _run(argv))


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .config import evaluate_settings, load_config

    cfg = load_config(args.config, args.out)  # a bad config: StudyConfigError (ValueError), exit status 2
    evaluate_settings(cfg)  # every evaluate value, before the data are built
    from .report import method_result, write_report
    from .runner import Study

    study = Study(cfg, progress=not args.quiet, show_output=args.show_output)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if args.report_only:
            data = study.prepare_data()
            records = [
                {"name": s.run.name, "step": s.kind, "hash": s.hash, "log": str(s.log)}
                | {"status": "up to date" if s.is_done() else "not done"}
                for run in cfg.methods
                for s in study.steps_of(run, data)
            ]
        else:
            records = study.run()
    except KeyboardInterrupt:
        print("clusiam-fast study: interrupted; run the same command to continue", file=sys.stderr)
        return 130
    finally:  # data the checks could not see (too few images), a full disk: one line, exit status 2 (run_verb)
        signal.signal(signal.SIGTERM, previous)
    rows = [
        method_result(run.name, run.method, cfg.out / "runs" / run.name, [r for r in records if r["name"] == run.name])
        for run in cfg.methods
    ]
    report = {
        "config": str(cfg.path),
        "settings": cfg.raw,
        "budget_flags": cfg.budget_flags,
        "train_args": cfg.train_args,
        "data": study.data_info,
        "methods": rows,
        "steps": records,
    }
    result = write_report(cfg.out, report)
    for row in result["methods"]:
        knn = row.get("knn", {}).get("f1_macro")
        mil = ", ".join(
            f"{m} AUC {v['auc_macro']:.3f}" for m, v in row.get("mil", {}).items() if v["auc_macro"] is not None
        )
        print(f"{row['name']}: KNN F1 {'n/a' if knn is None else f'{knn:.3f}'}" + (f", {mil}" if mil else ""))
    print(f"wrote {cfg.out / 'report.md'}, report.json, study.png")
    return PARTIAL if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
