"""Slide splits for the MIL protocol: held-out and k-fold, stratified, optionally by patient.

Every split here is made once, seeded, before any training. With ``groups`` (one patient
id per slide) all slides of a patient land on the same side of every split, so no
patient is both trained and tested on (the leakage of CLAM #269 and DSMIL #55).

- :func:`check_patients`: each patient's slides must share one class (a patient in two
  classes is an error naming the patient and its slides).
- :func:`holdout_split`: keep / held-out indices. Without groups: scikit-learn's
  ``train_test_split(stratify=labels)`` (:func:`~.data.stratified_split`, the paper's
  protocol). With groups: within each class, a seeded share of its patients is held out.
- :func:`kfold_splits`: ``StratifiedKFold`` over slides, or ``StratifiedGroupKFold``
  over patients when groups are given (shuffled, seeded); every slide is a test slide
  in exactly one fold. Each fold's validation split for model selection is carved out
  of its training part alone (:func:`~.protocol.select_model` receives nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import stratified_split


def _names(classes: Sequence[str] | None, k: int) -> str:
    return str(classes[k]) if classes is not None and k < len(classes) else str(k)


def check_patients(
    labels: Sequence[int], groups: Sequence[str], slide_ids: Sequence[str], classes: Sequence[str] | None = None
) -> None:
    """Refuse a patient whose slides have different classes (a patient-level split needs one class)."""
    by_patient: dict[str, dict[int, list[str]]] = {}
    for label, group, slide in zip(labels, groups, slide_ids):
        by_patient.setdefault(str(group), {}).setdefault(int(label), []).append(str(slide))
    mixed = {p: c for p, c in by_patient.items() if len(c) > 1}
    if mixed:
        shown = [
            f"patient {p!r} ("
            + " / ".join(f"{_names(classes, c)}: {', '.join(s[:5])}" for c, s in sorted(cl.items()))
            + ")"
            for p, cl in list(mixed.items())[:5]
        ]
        more = f" and {len(mixed) - 5} more patients" if len(mixed) > 5 else ""
        raise ValueError(
            f"{len(mixed)} patient(s) have slides of two or more classes: {'; '.join(shown)}{more}. "
            "Splits stratified by patient and the patient bootstrap need one class per patient: "
            "correct the label or the patient_id of these slides, or leave such slides out"
        )


def _per_class_counts(y: np.ndarray, groups: np.ndarray | None) -> dict[int, int]:
    """Slides (no groups) or patients (groups) per class."""
    if groups is None:
        return {int(c): int((y == c).sum()) for c in np.unique(y)}
    return {int(c): len(np.unique(groups[y == c])) for c in np.unique(y)}


def holdout_split(
    labels: Sequence[int], fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified (keep, held_out) indices with ``fraction`` held out; by patient with ``groups``.

    With groups, each class holds out round(fraction x its patients) of them (at least 1,
    at most all but 1), so the share is exact in patients, not slides.
    """
    y = np.asarray(labels)
    if groups is None:
        return stratified_split(y, fraction, seed)
    g = np.asarray([str(v) for v in groups])
    counts = _per_class_counts(y, g)
    small = [c for c, n in counts.items() if n < 2]
    if small:
        raise ValueError(
            f"a split by patient needs at least 2 patients per class; class index(es) {small} have "
            f"{[counts[c] for c in small]}"
        )
    rng = np.random.default_rng(seed)
    held_patients: set[str] = set()
    for c in sorted(counts):
        patients = np.unique(g[y == c])  # sorted: the draw depends on the seed only
        n = min(len(patients) - 1, max(1, round(fraction * len(patients))))
        held_patients.update(rng.permutation(patients)[:n].tolist())
    held = np.isin(g, list(held_patients))
    return np.flatnonzero(~held), np.flatnonzero(held)


def kfold_splits(
    labels: Sequence[int],
    folds: int,
    seed: int,
    groups: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) sorted indices of ``folds`` stratified folds, by patient with ``groups``.

    Raises a ValueError naming ``--folds`` when a class has fewer slides (patients, with
    groups) than folds: such a class could not appear in every test fold.
    """
    from ...utils.deps import require

    model_selection = require("sklearn.model_selection", "scikit-learn", "k-fold splits")
    y = np.asarray(labels)
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    g = None if groups is None else np.asarray([str(v) for v in groups])
    counts = _per_class_counts(y, g)
    unit = "slides" if g is None else "patients"
    short = {c: n for c, n in counts.items() if n < folds}
    if short:
        c, n = min(short.items(), key=lambda kv: kv[1])
        listing = ", ".join(f"{_names(classes, k)} {v}" for k, v in sorted(counts.items()))
        raise ValueError(
            f"--folds {folds} needs at least {folds} {unit} in every class, but class {_names(classes, c)!r} "
            f"has {n} ({unit} per class: {listing}); "
            + (f"use --folds {n} or fewer" if n >= 2 else f"no --folds is possible: label more {unit} of that class")
        )
    if g is None:
        splitter = model_selection.StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(y)), y)
    else:
        splitter = model_selection.StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(y)), y, g)
    out = [(np.sort(train), np.sort(test)) for train, test in parts]
    for k, (_, test) in enumerate(out):
        if len(test) == 0:
            raise ValueError(f"--folds {folds}: fold {k} got no test slides; use fewer folds")
    return out
