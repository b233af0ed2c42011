"""Run a study: train -> extract -> evaluate for each method, each step resumable, then the report.

Layout of ``OUT``::

    data/                      the training sample and the evaluation sets (links, see .datasets)
    runs/<name>/train/         the trainer's run folder (checkpoint.pt, log.csv, steps.csv, ...)
    runs/<name>/features/      extracted feature bags
    runs/<name>/eval/          the evaluation report of this method
    runs/<name>/<step>.log     the step's console output
    runs/<name>/done/<step>.json   the step's done record (cohort/records.py; failed/ for a failure)
    report.md, report.json, study.png

Before any step, the evaluate settings are checked against the slide labels with
evaluate's own check (:func:`~clusiam_fast.evaluation.pipeline.plan_slide_classification`).
An extract step that made no bag (every slide failed) fails, naming its failures.

A step is skipped when its done record (:mod:`.records`) holds the same settings (its command
line, the hashes of the steps before it), its input file (the weights, the feature index) is
unchanged and its output exists; a step whose settings changed runs again, and so do the
steps after it. Folders of older studies (sha1 ``<step>.done.json`` markers) are recognised. A training step that was killed continues from its
checkpoint (``--resume``, exact); one whose settings changed starts over (``--overwrite``).

Training runs as a subprocess (``python -m clusiam_fast.train``, the same interpreter):
every method starts from a fresh torch state (threads, RNG, allocator, CUDA context), a
crash is confined to its step and its log, and Ctrl-C / SIGTERM reach the trainer, which
saves its checkpoint. Extraction and evaluation run in this process through the CLIs'
``main(argv)`` (the same flags and code path; it saves a torch start-up per step), their
console output in the step's log; an exception there fails that method's step only. The
command lines in the done records (``result.command``) repeat a step by hand.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_write_json
from .config import RANDOM_INIT, MethodRun, StudyConfig, StudyConfigError, evaluate_settings
from .datasets import class_folder_sets, train_sample
from .records import forget, inputs_stamp, is_done, legacy_hash, settings_hash, write_done, write_failed

STEPS = ("train", "extract", "evaluate")


@dataclass
class Step:
    run: MethodRun
    kind: str  # train, extract or evaluate
    argv: list[str]  # what defines the result (hashed)
    folder: Path  # the step's output folder
    output: Path  # must exist for the step to count as done
    inputs: dict[str, Any] = field(default_factory=dict)  # the steps before it (Step: by hash), data descriptions
    extra: list[str] = field(default_factory=list)  # console-only flags (not hashed)
    reads: Path | None = None  # the file it reads from the step before (stamped in its record)

    def settings_with(self, digest) -> dict[str, Any]:
        """The settings, each step before this one given by its ``digest``-hash."""
        inputs = {k: digest(v.settings_with(digest)) if isinstance(v, Step) else v for k, v in self.inputs.items()}
        return {"kind": self.kind, "argv": self.argv, "inputs": inputs}

    @property
    def settings(self) -> dict[str, Any]:
        return self.settings_with(settings_hash)

    @property
    def hash(self) -> str:
        return settings_hash(self.settings)

    @property
    def legacy_hash(self) -> str:
        """The hash studies wrote before (sha1, all the way up the chain of steps)."""
        return legacy_hash(self.settings_with(legacy_hash))

    @property
    def records(self) -> Path:
        """The folder of the method's done records (``done/<step>.json``)."""
        return self.folder.parent

    @property
    def legacy_marker(self) -> Path:
        return self.folder.parent / f"{self.kind}.done.json"

    @property
    def log(self) -> Path:
        return self.folder.parent / f"{self.kind}.log"

    @property
    def files(self) -> list[Path]:
        return [self.reads] if self.reads is not None else []

    def is_done(self) -> bool:
        legacy = (self.legacy_marker, self.legacy_hash, self.output)
        return is_done(self.records, self.kind, self.settings, self.files, legacy)


@contextlib.contextmanager
def _redirected(log):
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def _seed(cfg: StudyConfig) -> int:
    flags = cfg.budget_flags
    return int(flags[flags.index("--seed") + 1]) if "--seed" in flags else 0


def _no_bag(step: Step) -> str | None:
    """Why an extract step made no feature bag (every slide failed), naming the failures; None if it made some."""
    import csv

    with open(step.output, newline="") as f:
        if any(True for _ in csv.DictReader(f)):
            return None
    summary_path = step.folder / "extract.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    failed = summary.get("failed_slides", []) + summary.get("missing_slides", [])
    shown = "; ".join(f"{f['slide_id']}: {f['reason']}" for f in failed[:5])
    more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
    return (
        f"extract made no feature bag: {len(failed)} slides failed ({shown}{more}; all in {summary_path}); "
        "evaluate was not run"
    )


class Study:
    """The steps of ``cfg`` and their execution; ``run()`` returns the step records for the report."""

    def __init__(self, cfg: StudyConfig, *, show_output: bool = False, progress: bool = True) -> None:
        self.cfg, self.show_output, self.progress = cfg, show_output, progress
        self.out = cfg.out
        self.data_info: dict[str, Any] = {}

    # ------------------------------------------------------------ data
    def prepare_data(self) -> dict[str, Any]:
        """Training data (maybe a sample) and evaluation sets; returns their paths."""
        cfg, seed = self.cfg, _seed(self.cfg)
        data = {"train": cfg.data["train"]}
        self.data_info["train"] = {"source": str(cfg.data["train"])}
        if "train_sample" in cfg.data:
            data["train"], self.data_info["train"] = train_sample(
                cfg.data["train"], cfg.data["train_sample"], seed, self.out / "data" / "train"
            )
        if cfg.builds_eval_set:
            sets = class_folder_sets(cfg.data, seed, self.out / "data")
            self.data_info["eval"] = sets.pop("info")
            data.update(sets)
        else:
            data.update({k: cfg.data.get(k) for k in ("eval", "patch_labels", "slide_labels")})
            self.data_info["eval"] = {k: str(v) for k, v in data.items() if k != "train" and v is not None}
        return data

    def check_slide_labels(self, data: dict[str, Any]) -> None:
        """The evaluate settings against the slide labels, before any step runs: the check ``evaluate``
        makes (as if every labelled slide gets a bag); a StudyConfigError naming ``evaluate``."""
        if not data.get("slide_labels"):
            return
        from ..evaluation.pipeline import plan_slide_classification

        try:
            plan_slide_classification(Path(data["slide_labels"]), evaluate_settings(self.cfg))
        except ValueError as error:
            raise StudyConfigError(f"{self.cfg.path}: evaluate: {error}") from None

    def check_leakage(self, data: dict[str, Any]) -> None:
        """No image of the evaluation sets may be in the training folder (links count as what they point
        to): the leakage guard of ``evaluate``, made before any training; a StudyConfigError naming them."""
        from ..formats.pretrain_record import PretrainRecord, find_overlap, resolved_file
        from .config import list_images

        train, evaluated = Path(data["train"]), data.get("eval")
        if not (train.is_dir() and evaluated and Path(evaluated).is_dir()):
            return  # slides and manifests are checked by evaluate, from the run's pretrain_data.json
        record = PretrainRecord("folder", files=[resolved_file(p) for p in list_images(train)])
        overlap = find_overlap(record, test_files=list_images(Path(evaluated)))
        if overlap:
            raise StudyConfigError(
                f"{self.cfg.path}: {overlap.describe()} of the evaluation sets are in the training data {train}: "
                "train on images the evaluation never uses"
            )

    # ------------------------------------------------------------ steps
    def steps_of(self, run: MethodRun, data: dict[str, Any]) -> list[Step]:
        cfg, folder = self.cfg, self.out / "runs" / run.name
        train_dir = folder / "train"
        argv = [str(data["train"]), "--method", cfg.train_method(run), *cfg.budget_flags, *cfg.train_args, *run.flags]
        if run.method == RANDOM_INIT:  # the initial weights (same seed as the others), exported untrained
            weights = train_dir / "backbone.pt"
            argv += ["--max-steps", "0", "--export-backbone", str(weights)]
        else:
            weights = train_dir / "checkpoint.pt"
        train = Step(run, "train", argv, train_dir, weights, inputs={"data": self.data_info["train"]})
        train.extra = [] if self.show_output else ["--no-progress"]

        features = folder / "features"
        extract = Step(
            run,
            "extract",
            [str(weights), str(data["eval"]), *cfg.extract_flags],
            features,
            features / "index.csv",
            inputs={"train": train, "data": self.data_info["eval"]},
            extra=[] if self.show_output else ["--quiet"],
            reads=weights,
        )
        labels = []
        if data.get("patch_labels"):
            labels += ["--patch-labels", str(data["patch_labels"])]
        if data.get("slide_labels"):
            labels += ["--labels", str(data["slide_labels"])]
        report = folder / "eval"
        evaluate = Step(
            run,
            "evaluate",
            [str(features), *labels, *cfg.evaluate_flags],
            report,
            report / "report.json",
            inputs={"extract": extract},
            extra=[] if self.show_output else ["--quiet"],
            reads=extract.output,
        )
        return [train, extract, evaluate]

    def _command(self, step: Step) -> list[str]:
        cmd = [sys.executable, "-m", f"clusiam_fast.{step.kind}"]
        if step.kind == "train":
            started = step.folder.parent / "train.started.json"
            resume = (
                started.is_file()
                and json.loads(started.read_text()).get("hash") in (step.hash, step.legacy_hash)
                and (step.folder / "checkpoint.pt").is_file()
            )
            return [*cmd, *step.argv, "--out", str(step.folder), "--resume" if resume else "--overwrite", *step.extra]
        return [*cmd, *step.argv, "--out", str(step.folder), *step.extra]

    def _subprocess(self, cmd: list[str], step: Step) -> int:
        log = None if self.show_output else open(step.log, "w")
        try:
            child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None)
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C / SIGTERM: let the trainer save its checkpoint, then stop
                child.send_signal(signal.SIGTERM)  # (a second SIGINT would make it abort without saving)
                try:
                    child.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    child.kill()
                raise
        finally:
            if log is not None:
                log.close()

    def _in_process(self, argv: list[str], step: Step) -> int:
        """extract / evaluate through their CLI ``main(argv)``, the console output into the step's log."""
        import traceback

        from .. import evaluate, extract

        main = {"extract": extract.main, "evaluate": evaluate.main}[step.kind]
        with open(step.log, "w") as log:
            streams = contextlib.nullcontext() if self.show_output else _redirected(log)
            with streams:
                try:
                    return main(argv)
                except SystemExit as error:  # argparse: a bad flag (the config checks should have caught it)
                    return error.code if isinstance(error.code, int) else 2
                except Exception:  # a crash fails this method's step, not the study
                    traceback.print_exc(file=log if not self.show_output else sys.stderr)
                    return 1 if step.kind != "extract" else 3

    def _execute(self, step: Step) -> dict[str, Any]:
        step.folder.parent.mkdir(parents=True, exist_ok=True)
        cmd = self._command(step)
        if step.kind == "train":
            atomic_write_json(step.folder.parent / "train.started.json", {"hash": step.hash, "command": cmd})
        forget(step.records, step.kind, step.legacy_marker)  # its outputs are about to be rewritten
        stamp = inputs_stamp(step.files)  # before it reads them: a file changed meanwhile is redone next time
        start = time.time()
        rc = self._subprocess(cmd, step) if step.kind == "train" else self._in_process(cmd[3:], step)
        seconds = time.time() - start
        # extract exits 1 when some patches or slides failed (listed in extract.json); the bags are usable
        ok = rc == 0 or (step.kind == "extract" and rc == 1 and step.output.exists())
        no_bag = _no_bag(step) if ok and step.kind == "extract" else None
        ok = ok and no_bag is None
        record = {"status": "done" if ok else "failed", "exit_status": rc, "seconds": round(seconds, 1)}
        if ok:
            output = step.output.relative_to(step.records).as_posix()
            result = {"command": cmd, "exit_status": rc}
            write_done(step.records, step.kind, stamp, step.settings, result, [output], seconds)
        else:
            tail = step.log.read_text(errors="replace").splitlines()[-15:] if step.log.is_file() else []
            record["error"] = "\n".join([no_bag] * bool(no_bag) + tail) or f"exit status {rc}"
            write_failed(step.records, step.kind, str(step.folder), record["error"])
        return record

    def run(self) -> list[dict[str, Any]]:
        """Every step of every method in order (a failed method's later steps are left out); the records."""
        from tqdm.auto import tqdm

        data = self.prepare_data()
        self.check_slide_labels(data)
        self.check_leakage(data)
        plan = [self.steps_of(run, data) for run in self.cfg.methods]
        current = [up_to_date(steps) for steps in plan]
        total = sum(len(steps) for steps in plan)
        print(f"study: {steps_count(sum(current))} up to date, {total - sum(current)} to run", file=sys.stderr)
        records = []
        bar = tqdm(total=total, desc="study", disable=not self.progress, dynamic_ncols=True)
        for steps, done in zip(plan, current):
            failed = False
            for k, step in enumerate(steps):
                bar.set_description(f"{step.run.name}: {step.kind}")
                base = {"name": step.run.name, "step": step.kind, "hash": step.hash, "log": str(step.log)}
                if failed:
                    record = {"status": "not run (an earlier step failed)"}
                elif k < done:
                    record = {"status": "up to date", "seconds": 0.0}
                else:
                    record = self._execute(step)
                    if record["status"] == "failed":
                        failed = True
                        tqdm.write(
                            f"study: {step.run.name}: {step.kind} failed (exit status {record['exit_status']}); "
                            f"see {step.log}\n{record['error']}",
                            file=sys.stderr,
                        )
                records.append({**base, **record})
                bar.update(1)
        bar.close()
        return records


def up_to_date(steps: list[Step]) -> int:
    """How many of a method's steps are up to date: those before the first that is not (that one runs,
    and so do the steps after it)."""
    done = 0
    while done < len(steps) and steps[done].is_done():
        done += 1
    return done


def steps_count(n: int) -> str:
    return f"{n} step{'s' * (n != 1)}"
