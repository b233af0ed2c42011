"""The study config (YAML): read, check every key, and turn it into the command lines of each step.

Everything is checked here, before any training: an unknown key, an unknown method, a
missing data folder or a bad budget is a :class:`StudyConfigError` naming the key
(``methods[2].method``, ``data.train``, ``budget.max_steps``). Training and evaluation
flags are checked by the real parsers of ``clusiam_fast.train`` / ``extract`` /
``evaluate`` and by :meth:`TrainConfig.check_given`, so a study accepts exactly what the
CLIs accept, and all of it is checked without importing torch.

Schema (see ``benchmarks/study_pcam.yaml`` for a commented example)::

    out: runs/study                    # optional; --out overrides
    data:
      train: PATH                      # patches for self-supervised training (folder or tiler manifest.csv)
      train_sample: N                  # optional: a seeded sample of N images of the folder
      class_folders: PATH              # ROOT/<class>/*.jpg: the study builds the KNN set and pseudo-bags
      knn_per_class: 100               #   patches per class for KNN + clustering (half train, half test)
      mil_bags: 100                    #   pseudo-bags; a bag is positive when it holds a positive_class patch
      bag_size: [6, 9]                 #   patches per bag, drawn in [low, high)
      positive_class: "1"              #   default: the last class in sorted order
      # or, instead of class_folders, your own sets (passed to extract / evaluate as they are):
      eval: PATH                       # folder or tiler manifest.csv to extract features from
      patch_labels: patches.csv        # optional: KNN + clustering
      slide_labels: slides.csv         # optional: MIL
    budget: {epochs: 2, max_steps: 300, batch_size: 64, crop_size: 64, seed: 0}   # any train flag; shared
    train_args: ["--amp"]              # optional: more train flags for every method
    methods:                           # name = method unless method: is given; other keys are train flags
      - name: clusiam
      - {name: clusiam_k10, method: clusiam, num_clusters: 10}
      - {name: no_gumbel, method: clusiam, no_gumbel: true}
      - {name: random_init, method: random_init}   # baseline: the seeded initial ResNet, untrained
    extract: {resize: 64, batch_size: 128, workers: 2}          # any extract flag
    evaluate: {models: [maxpool, dsmil], seeds: [0, 1, 2]}      # any evaluate flag

A flag key is the flag without ``--``, dashes or underscores (``max_steps``); ``true``
gives a switch (``no_gumbel: true``), a list gives several values (``seeds: [0, 1]``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.resolve import IMAGE_EXTENSIONS  # what a DATA folder's images are (torch-free)

RANDOM_INIT = "random_init"  # baseline: the backbone as initialised with the study's seed, never trained
# Train flags the study sets itself (per step), and flags that would make the budget differ between methods.
RESERVED_TRAIN = ("data", "out", "method", "resume", "overwrite", "demo", "export_backbone")
SHARED_BUDGET = ("epochs", "max_steps", "batch_size", "seed", "crop_size", "lr", "max_stat_images")
RESERVED_EXTRACT = ("checkpoint", "data", "out")
RESERVED_EVALUATE = ("features", "out", "labels", "patch_labels")
DATA_KEYS = (
    "train",
    "train_sample",
    "class_folders",
    "knn_per_class",
    "mil_bags",
    "bag_size",
    "positive_class",
    "eval",
    "patch_labels",
    "slide_labels",
)
TOP_KEYS = ("out", "data", "budget", "train_args", "methods", "extract", "evaluate")


class StudyConfigError(ValueError):
    """A study config that cannot run; the message names the file and the key."""


@dataclass
class MethodRun:
    """One row of the study: its name, the method, and its own train flags."""

    name: str
    method: str  # a registry method or RANDOM_INIT
    flags: list[str] = field(default_factory=list)  # per-method train flags (--num-clusters 10, --no-gumbel)


@dataclass
class StudyConfig:
    path: Path
    out: Path
    data: dict[str, Any]  # paths made absolute
    budget_flags: list[str]
    train_args: list[str]
    methods: list[MethodRun]
    extract_flags: list[str]
    evaluate_flags: list[str]
    raw: dict[str, Any]

    @property
    def builds_eval_set(self) -> bool:
        return "class_folders" in self.data

    def train_method(self, run: MethodRun) -> str:
        """The trainer's --method: random_init is SimSiam's backbone at step 0 (no assigner)."""
        from ..choices import RANDOM_INIT_METHOD

        return RANDOM_INIT_METHOD if run.method == RANDOM_INIT else run.method


def _fail(source: Path, key: str, what: str) -> StudyConfigError:
    return StudyConfigError(f"{source}: {key}: {what}")


def _parser_raising(parser: argparse.ArgumentParser, source: Path, key: str) -> argparse.ArgumentParser:
    """Make argparse raise (naming the study key) instead of printing usage and exiting."""

    def error(message: str) -> None:
        raise _fail(source, key, message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def to_flags(
    mapping: dict[str, Any], parser: argparse.ArgumentParser, source: Path, key: str, reserved: tuple[str, ...]
) -> list[str]:
    """``{max_steps: 3, no_gumbel: true, seeds: [0, 1]}`` -> ``--max-steps 3 --no-gumbel --seeds 0 1``."""
    if not isinstance(mapping, dict):
        raise _fail(source, key, f"must be a mapping of flags (e.g. max_steps: 100), got {mapping!r}")
    options = parser._option_string_actions  # flag -> action, the parser's own table
    flags: list[str] = []
    for name, value in mapping.items():
        where = f"{key}.{name}"
        canonical = str(name).replace("-", "_")
        if canonical in reserved:
            raise _fail(source, where, "is set by the study itself; leave it out")
        flag = "--" + canonical.replace("_", "-")
        if flag not in options:
            known = sorted(o[2:].replace("-", "_") for o in options if o.startswith("--") and o != "--help")
            raise _fail(source, where, f"unknown flag {flag}; known: {', '.join(known)}")
        action = options[flag]
        if value is None:
            continue
        if isinstance(value, bool):
            if action.nargs == 0:  # a switch: true gives it, false leaves it out (or its --no- form)
                negative = "--no-" + flag[2:]
                if value:
                    flags.append(flag)
                elif isinstance(action, argparse.BooleanOptionalAction) and negative in options:
                    flags.append(negative)
                continue
            raise _fail(source, where, f"{flag} takes a value, got {value!r}")
        if action.nargs == 0:
            raise _fail(source, where, f"{flag} is a switch: write {name}: true")
        values = value if isinstance(value, (list, tuple)) else [value]
        flags += [flag, *(str(v) for v in values)]
    return flags


def _str_list(value: Any, source: Path, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise _fail(source, key, f"must be a list of command-line words, e.g. ['--amp'], got {value!r}")
    return [str(v) for v in value]


def _path(value: Any, base: Path, source: Path, key: str, *, kind: str) -> Path:
    """A path relative to the config file's folder (or absolute) that must exist as ``kind``."""
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise _fail(source, key, f"must be a path, got {value!r}")
    path = Path(os.path.expanduser(str(value)))
    path = path if path.is_absolute() else (base / path)
    path = Path(os.path.normpath(path))
    if kind == "folder" and not path.is_dir():
        raise _fail(source, key, f"folder {path} does not exist" if not path.exists() else f"{path} is not a folder")
    if kind == "file" and not path.is_file():
        raise _fail(source, key, f"file {path} does not exist")
    if kind == "data" and not path.exists():
        raise _fail(source, key, f"{path} does not exist (give a folder of patches or a tiler manifest.csv)")
    return path


def list_images(root: Path) -> list[Path]:
    """Images under ``root`` (recursive, sorted, hidden entries skipped): cheap, no torch."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _positive_int(value: Any, source: Path, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _check_data(data: Any, base: Path, source: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(source, "data", "must be a mapping with train: and class_folders: (or eval:)")
    for key in data:
        if key not in DATA_KEYS:
            raise _fail(source, f"data.{key}", f"unknown key; known: {', '.join(DATA_KEYS)}")
    if "train" not in data:
        raise _fail(source, "data.train", "missing: the patches to train on (a folder or a tiler manifest.csv)")
    out: dict[str, Any] = {"train": _path(data["train"], base, source, "data.train", kind="data")}
    if "train_sample" in data:
        if not out["train"].is_dir():
            raise _fail(source, "data.train_sample", "samples images of a folder; data.train is a file")
        out["train_sample"] = _positive_int(data["train_sample"], source, "data.train_sample", 2)
    if "class_folders" in data:
        if "eval" in data:
            raise _fail(source, "data.eval", "give either class_folders (the study builds the sets) or eval, not both")
        root = _path(data["class_folders"], base, source, "data.class_folders", kind="folder")
        classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(classes) < 2:
            raise _fail(source, "data.class_folders", f"{root} needs two or more class subfolders, found {classes}")
        out.update(
            class_folders=root,
            classes=classes,
            knn_per_class=_positive_int(data.get("knn_per_class", 100), source, "data.knn_per_class", 2),
            mil_bags=_positive_int(data.get("mil_bags", 100), source, "data.mil_bags", 0),
            positive_class=str(data.get("positive_class", classes[-1])),
        )
        size = data.get("bag_size", [6, 9])
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) for s in size)):
            raise _fail(source, "data.bag_size", f"must be [low, high) patches per bag, e.g. [6, 9], got {size!r}")
        if not 2 <= size[0] < size[1]:
            raise _fail(source, "data.bag_size", f"needs 2 <= low < high, got {size}")
        out["bag_size"] = list(size)
        if out["positive_class"] not in classes:
            raise _fail(source, "data.positive_class", f"{out['positive_class']!r} is not one of {classes}")
        for key in ("patch_labels", "slide_labels"):
            if key in data:
                raise _fail(source, f"data.{key}", "class_folders writes its own label tables; leave it out")
    elif "eval" in data:
        out["eval"] = _path(data["eval"], base, source, "data.eval", kind="data")
        for key in ("patch_labels", "slide_labels"):
            if key in data:
                out[key] = _path(data[key], base, source, f"data.{key}", kind="file")
        if "patch_labels" not in out and "slide_labels" not in out:
            raise _fail(source, "data.patch_labels", "give patch_labels and/or slide_labels with data.eval")
    else:
        raise _fail(source, "data.class_folders", "missing: give class_folders (ROOT/<class>/*) or eval + labels")
    return out


def _check_methods(
    methods: Any, source: Path, train_parser: argparse.ArgumentParser
) -> tuple[list[MethodRun], list[str]]:
    from ..training.config import METHOD_NAMES  # the registry's names, without importing torch

    valid = (*METHOD_NAMES, RANDOM_INIT)
    if not isinstance(methods, list) or not methods:
        raise _fail(source, "methods", "must be a non-empty list, e.g. [{name: clusiam}, {name: simsiam}]")
    runs, seen = [], set()
    for i, entry in enumerate(methods):
        key = f"methods[{i}]"
        entry = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise _fail(source, f"{key}.name", f"each method needs a name, got {entry!r}")
        name = entry["name"]
        if not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise _fail(source, f"{key}.name", f"{name!r}: use letters, digits, '-', '_' or '.' (it names a folder)")
        if name in seen:
            raise _fail(source, f"{key}.name", f"{name!r} is used twice; names must be unique")
        seen.add(name)
        method = entry.get("method", name)
        if method not in valid:
            which = f"{key}.method" if "method" in entry else f"{key}.name"
            raise _fail(source, which, f"unknown method {method!r}; choose one of {', '.join(valid)}")
        options = {k: v for k, v in entry.items() if k not in ("name", "method", "args")}
        for k in options:
            if k.replace("-", "_") in SHARED_BUDGET:
                raise _fail(source, f"{key}.{k}", "is part of the shared budget; set it under budget: for every method")
        flags = to_flags(options, train_parser, source, key, RESERVED_TRAIN)
        args = _str_list(entry.get("args"), source, f"{key}.args")
        for word in args:
            if word.startswith("--") and word[2:].split("=")[0].replace("-", "_") in SHARED_BUDGET:
                raise _fail(source, f"{key}.args", f"{word} is part of the shared budget; set it under budget:")
        flags += args
        runs.append(MethodRun(name, method, flags))
    return runs, list(valid)


def _check_train_flags(cfg: StudyConfig, source: Path) -> None:
    """Each method's full train command line parses and resolves (TrainConfig checks every value)."""
    from ..train import build_parser
    from ..training.config import TrainConfig

    for i, run in enumerate(cfg.methods):
        key = f"methods[{i}] ({run.name})"
        argv = [str(cfg.data["train"]), "--out", str(cfg.out / "runs" / run.name / "train")]
        argv += ["--method", cfg.train_method(run), *cfg.budget_flags, *cfg.train_args, *run.flags]
        args = vars(_parser_raising(build_parser(), source, key).parse_args(argv))  # only the flags given
        try:
            TrainConfig.from_dict(args).check_given()
        except ValueError as error:
            raise _fail(source, key, f"train flags rejected: {error}") from None


def load_config(path: str | Path, out: str | Path | None = None) -> StudyConfig:
    """Read and check ``path``; relative paths in it are relative to its folder (``out``: relative to the cwd)."""
    from ..utils.deps import require

    yaml = require("yaml", "pyyaml", "reading study configs")
    source = Path(path)
    if not source.is_file():
        raise StudyConfigError(f"study config {source} does not exist")
    try:
        raw = yaml.safe_load(source.read_text())
    except yaml.YAMLError as error:
        raise StudyConfigError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise StudyConfigError(f"{source}: must be a YAML mapping with data:, budget: and methods:")
    for key in raw:
        if key not in TOP_KEYS:
            raise _fail(source, str(key), f"unknown key; known: {', '.join(TOP_KEYS)}")
    base = source.resolve().parent
    if out is None:
        if "out" not in raw:
            raise _fail(source, "out", "missing: give out: in the config or --out on the command line")
        out = Path(os.path.expanduser(str(raw["out"])))
        out = out if out.is_absolute() else base / out
    out = Path(os.path.normpath(Path(out).absolute()))
    if out.exists() and not out.is_dir():
        raise _fail(source, "out", f"{out} is a file, not a folder")

    from ..evaluate import build_parser as evaluate_parser
    from ..extract import build_parser as extract_parser
    from ..train import build_parser as train_parser

    data = _check_data(raw.get("data"), base, source)
    budget = raw.get("budget")
    if not isinstance(budget, dict) or not ({"epochs", "max_steps"} & set(budget)):
        raise _fail(source, "budget", "must give epochs and/or max_steps (the same budget for every method)")
    for key in ("epochs", "max_steps", "batch_size"):
        if key in budget:
            _positive_int(budget[key], source, f"budget.{key}", 1 if key != "batch_size" else 2)
    tp = train_parser()
    budget_flags = to_flags(budget, tp, source, "budget", RESERVED_TRAIN)
    train_args = _str_list(raw.get("train_args"), source, "train_args")
    methods, _ = _check_methods(raw.get("methods"), source, tp)
    extract_flags = to_flags(raw.get("extract") or {}, extract_parser(), source, "extract", RESERVED_EXTRACT)
    evaluate_flags = to_flags(raw.get("evaluate") or {}, evaluate_parser(), source, "evaluate", RESERVED_EVALUATE)
    cfg = StudyConfig(
        source.resolve(), out, data, budget_flags, train_args, methods, extract_flags, evaluate_flags, raw
    )
    _check_train_flags(cfg, source)
    _parser_raising(extract_parser(), source, "extract").parse_args(["ckpt", "data", "--out", "o", *extract_flags])
    return cfg  # torch-free so far; evaluate's value checks need its config types: evaluate_settings(cfg)


def evaluate_settings(cfg: StudyConfig):
    """The :class:`~clusiam_fast.evaluation.pipeline.EvalConfig` of the study's evaluate flags, every value
    checked as ``evaluate`` checks it (a StudyConfigError naming ``evaluate``)."""
    from ..evaluate import build_parser, config_from_args

    parser = _parser_raising(build_parser(), cfg.path, "evaluate")
    try:
        return config_from_args(parser.parse_args(["features", "--out", "o", *cfg.evaluate_flags]))
    except ValueError as error:
        if isinstance(error, StudyConfigError):
            raise
        raise _fail(cfg.path, "evaluate", str(error)) from None
