"""What slide labels allow, checked before any training: every split the MIL protocol will make.

The protocol splits twice: first the test slides (a ``split`` column, a seeded holdout of
``test_fraction``, or ``folds`` stratified folds), then, in every training part and for
every seed, the validation split (``val_fraction``) that model selection takes from the
training slides (:func:`~.protocol.select_model`). :func:`plan_splits` makes the test
splits with the functions and seed the run uses, checks every training part for the
validation split, and returns the test splits; a split that cannot be made is one
ValueError naming the classes and their counts, what these labels allow (one split,
which ``--folds``) and what to change.

A stratified split of n slides holding out a fraction f (scikit-learn's
``train_test_split(stratify=...)``) needs every class to have at least 2 slides, and the
ceil(f n) held-out and n - ceil(f n) kept slides to number at least the classes each; by
patient, every class needs at least 2 patients. Neither depends on the seed. The
validation split also needs every class in the training part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .splits import holdout_split, kfold_splits

MAX_FOLDS_TRIED = 20  # the folds searched when saying which --folds the labels allow


def _counts(y: np.ndarray, groups: np.ndarray | None, num_classes: int) -> list[int]:
    """Slides (patients, with groups) of each class index."""
    if groups is None:
        return [int((y == c).sum()) for c in range(num_classes)]
    return [len(np.unique(groups[y == c])) for c in range(num_classes)]


def split_problem(
    y: np.ndarray, groups: np.ndarray | None, classes: Sequence[str], fraction: float, what: str, flag: str
) -> str | None:
    """Why a stratified split of ``y`` holding out ``fraction`` (set by ``flag``) cannot be made (None: it can)."""
    unit = "slides" if groups is None else "patients"
    counts = _counts(y, groups, len(classes))
    small = [(classes[c], n) for c, n in enumerate(counts) if n < 2]
    if small:
        shown = ", ".join(f"{name!r} has {n}" for name, n in small)
        return f"{what} needs at least 2 {unit} of every class, but class {shown}"
    if groups is None:
        n, held = len(y), math.ceil(fraction * len(y))
        if min(held, n - held) < len(classes):
            change = "raise" if held < len(classes) else "lower"
            return (
                f"{what} holds out {held} of {n} slides and keeps {n - held}; "
                f"each part needs a slide of each of the {len(classes)} classes ({change} {flag})"
            )
    return None


def _test_splits(y, g, classes, split_column, folds, test_fraction, seed) -> tuple[list | None, str | None]:
    """The (train, test) index pairs of the first split, or why they cannot be made."""
    unit = "slides" if g is None else "patients"
    if folds:
        short = [(classes[c], n) for c, n in enumerate(_counts(y, g, len(classes))) if n < folds]
        if short:
            name, n = min(short, key=lambda s: s[1])
            return None, f"--folds {folds} puts {unit} of every class in each test fold, but class {name!r} has {n}"
        return kfold_splits(y, folds, seed, None if g is None else list(g), list(classes)), None
    if split_column is not None:
        train = np.flatnonzero(np.asarray(split_column) == "train")
        test = np.flatnonzero(np.asarray(split_column) == "test")
        if not len(test):
            return None, "the split column marks no labelled slide 'test'"
        return [(train, test)], None
    problem = split_problem(
        y, g, classes, test_fraction, f"the test split (--test-fraction {test_fraction:g})", "--test-fraction"
    )
    if problem:
        return None, problem
    return [holdout_split(y, test_fraction, seed, None if g is None else list(g))], None


def _try(y, g, classes, split_column, folds, test_fraction, val_fraction, seed) -> tuple[list | None, str | None]:
    """The test splits when they and every validation split can be made, else why not."""
    splits, problem = _test_splits(y, g, classes, split_column, folds, test_fraction, seed)
    if problem:
        return None, problem
    for k, (train, _) in enumerate(splits):
        where = f" of fold {k}" if folds else ""
        what = (
            f"the validation split (--val-fraction {val_fraction:g}) that model selection takes from "
            f"the {len(train)} training slides{where}"
        )
        problem = split_problem(
            y[train], None if g is None else g[train], classes, val_fraction, what, "--val-fraction"
        )
        if problem:
            return None, problem
    return splits, None


def _folds_text(allowed: list[int]) -> str:
    if len(allowed) > 1 and allowed == list(range(allowed[0], allowed[-1] + 1)):
        more = " (or more)" if allowed[-1] == MAX_FOLDS_TRIED else ""
        return f"--folds {allowed[0]} to {allowed[-1]}{more}"
    return "--folds " + ", ".join(map(str, allowed))


def per_class_minimum(folds: int | None, split_column) -> int:
    """Slides (patients) a class needs at least: 2 to train on (the validation split takes one) plus,
    on one split, 1 to test; with k folds, one per test fold while the largest fold leaves 2."""
    if split_column is not None and not folds:
        return 2  # training slides of the split column
    if not folds:
        return 3
    n = folds
    while n - math.ceil(n / folds) < 2:
        n += 1
    return n


def _needs(unit: str, split_column, folds) -> str:
    """The per-class minimum of the requested plan, in words (a necessary condition)."""
    val = f"because model selection takes a validation split (--val-fraction) from the training {unit}"
    m = per_class_minimum(folds, split_column)
    if folds:
        return (
            f"--folds {folds} needs at least {m} {unit} per class: one in each of the {folds} test folds "
            f"and 2 in every fold's training part, {val}"
        )
    if split_column is not None:
        return f"the split column needs at least {m} training {unit} per class, {val}"
    return f"one train/test split needs at least {m} {unit} per class: 1 to test and 2 to train on, {val}"


def plan_splits(
    labels: Sequence[int],
    classes: Sequence[str],
    *,
    groups: Sequence[str] | None = None,
    split_column: Sequence[str] | None = None,
    folds: int | None = None,
    test_fraction: float = 0.25,
    val_fraction: float = 0.25,
    seed: int = 0,
    source: str = "slide labels",
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, test) indices of the test split (one pair, or one per fold); a ValueError when any
    split of the protocol cannot be made (see the module docstring)."""
    y = np.asarray(labels)
    g = None if groups is None else np.asarray([str(v) for v in groups])
    classes = [str(c) for c in classes]
    splits, problem = _try(y, g, classes, split_column, folds, test_fraction, val_fraction, seed)
    if splits is not None:
        return splits
    unit = "slides" if g is None else "patients"
    counts = _counts(y, g, len(classes))
    single = _try(y, g, classes, split_column, None, test_fraction, val_fraction, seed)[1] is None
    tried = range(2, min(min(counts), MAX_FOLDS_TRIED) + 1)
    allowed = [k for k in tried if _try(y, g, classes, None, k, test_fraction, val_fraction, seed)[1] is None]
    allows = [("the split column's train/test split" if split_column is not None else "one train/test split")] * single
    allows += [_folds_text(allowed)] if allowed else []
    changes = []
    if allowed and folds != max(allowed):
        changes.append(f"use --folds {max(allowed)}")
    if single and folds:
        changes.append("drop --folds")
    if split_column is not None and not folds:
        changes.append(f"change the split column (2 training {unit} of every class, and test {unit})")
        if _try(y, g, classes, None, None, test_fraction, val_fraction, seed)[1] is None:
            changes.append("drop the split column (a seeded stratified split is made)")
    m = per_class_minimum(folds, split_column)
    short = [
        f"{m - n} more {unit if m - n > 1 else unit[:-1]} of class {c!r}" for c, n in zip(classes, counts) if n < m
    ]
    if short and split_column is None:
        changes.append(f"label at least {' and '.join(short)}")
    elif split_column is None or folds:
        changes.append(f"label more {unit} of class {classes[int(np.argmin(counts))]!r}")
    asked = f"with --folds {folds}" if folds else "on one train/test split"
    return_text = (
        f"{source}: slide classification {asked} is not possible: {problem}. "
        f"{unit.capitalize()} per class: {', '.join(f'{c} {n}' for c, n in zip(classes, counts))}; "
        f"{_needs(unit, split_column, folds)}. "
        f"These labels allow {' and '.join(allows) if allows else 'no train/test split and no --folds'}. "
        f"To change: {'; or '.join(changes)}"
    )
    raise ValueError(return_text)
