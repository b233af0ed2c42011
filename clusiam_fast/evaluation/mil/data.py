"""Slide-level MIL data: bags of instance features with one class label per bag.

A :class:`BagDataset` holds the bags in memory (any float dtype, e.g. float16 as
written by ``clusiam_fast.extract --fp16``); batches are padded with masks and cast
to float32 on the way to the model.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .bags import pad_bags


@dataclass
class BagDataset:
    """Bags (N_i, F), integer labels in [0, len(classes)), slide ids, class names and,
    optionally, a patient id per slide (``groups``: splits keep a patient's slides together)."""

    features: list[Tensor]
    labels: Tensor
    slide_ids: list[str]
    classes: list[str] = field(default_factory=list)
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = torch.as_tensor(self.labels, dtype=torch.long)
        if not (len(self.features) == len(self.labels) == len(self.slide_ids)):
            raise ValueError(
                f"{len(self.features)} bags, {len(self.labels)} labels and {len(self.slide_ids)} slide ids differ"
            )
        if self.groups is not None:
            self.groups = [str(g) for g in self.groups]
            if len(self.groups) != len(self.slide_ids):
                raise ValueError(f"{len(self.groups)} patient ids for {len(self.slide_ids)} slides")
        if not self.classes:
            self.classes = [str(c) for c in range(int(self.labels.max()) + 1 if len(self.labels) else 0)]
        for sid, bag in zip(self.slide_ids, self.features):
            if bag.dim() != 2 or bag.shape[0] == 0:
                raise ValueError(
                    f"bag of slide {sid!r} must be a non-empty (instances, features) tensor, got {tuple(bag.shape)}"
                )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got {self.labels.unique().tolist()}")

    @classmethod
    def from_arrays(
        cls,
        bags: Sequence,
        labels: Sequence[int],
        slide_ids: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> BagDataset:
        """Build from numpy arrays or tensors (kept in their dtype, not copied when possible)."""
        feats = [torch.as_tensor(np.asarray(b)) if not isinstance(b, Tensor) else b for b in bags]
        ids = list(slide_ids) if slide_ids is not None else [f"bag{i}" for i in range(len(feats))]
        return cls(
            feats,
            torch.as_tensor(list(labels), dtype=torch.long),
            ids,
            list(classes or []),
            None if groups is None else list(groups),
        )

    def __len__(self) -> int:
        return len(self.features)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def feature_dim(self) -> int:
        return int(self.features[0].shape[1])

    def subset(self, indices: Sequence[int]) -> BagDataset:
        idx = [int(i) for i in indices]
        return BagDataset(
            [self.features[i] for i in idx],
            self.labels[idx],
            [self.slide_ids[i] for i in idx],
            list(self.classes),
            None if self.groups is None else [self.groups[i] for i in idx],
        )

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Yield (x (B, N, F) float32, mask (B, N), labels (B,)) padded batches."""
        order = torch.randperm(len(self), generator=generator).tolist() if shuffle else list(range(len(self)))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, mask = pad_bags([self.features[i] for i in idx], device=device)
            yield x, mask, self.labels[idx].to(device)


def stratified_split(labels: Sequence[int] | Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of indices into (keep, held_out) with ``fraction`` held out.

    Uses scikit-learn's ``train_test_split(stratify=...)``. Each class needs >= 2 members.
    """
    from ...utils.deps import require

    model_selection = require("sklearn.model_selection", "scikit-learn", "stratified splits")
    y = np.asarray(labels)
    counts = np.bincount(y)
    if (counts[counts > 0] < 2).any():
        small = [int(c) for c in np.flatnonzero((counts > 0) & (counts < 2))]
        raise ValueError(f"stratified split needs at least 2 slides per class; class index(es) {small} have 1")
    keep, held = model_selection.train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    return np.sort(keep), np.sort(held)


def key_instance_bags(
    negatives: np.ndarray,
    keys: np.ndarray,
    num_bags: int,
    *,
    bag_size: tuple[int, int] = (6, 10),
    num_keys: tuple[int, int] = (1, 3),
    seed: int = 0,
) -> tuple[list[np.ndarray], list[int], list[np.ndarray]]:
    """Bags drawn from instance features: a bag is positive iff it holds a key instance.

    Every other bag is positive, with ``num_keys`` (inclusive range) key instances
    (e.g. tumour patches) among negatives; sizes are drawn from ``bag_size``
    (inclusive); instances are drawn with replacement and shuffled. Returns
    (bags, labels, is_key masks), for sanity checks of MIL heads on real patches.
    """
    rng = np.random.default_rng(seed)
    bags, labels, masks = [], [], []
    for i in range(num_bags):
        positive = i % 2
        size = int(rng.integers(bag_size[0], bag_size[1] + 1))
        k = int(rng.integers(num_keys[0], num_keys[1] + 1)) if positive else 0
        k = min(k, size)
        x = np.concatenate([negatives[rng.integers(0, len(negatives), size - k)], keys[rng.integers(0, len(keys), k)]])
        is_key = np.r_[np.zeros(size - k, bool), np.ones(k, bool)]
        order = rng.permutation(size)
        bags.append(x[order])
        labels.append(positive)
        masks.append(is_key[order])
    return bags, labels, masks
