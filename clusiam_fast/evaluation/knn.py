"""Patch KNN: top-1 nearest training patch by cosine similarity, chunked.

Memory: the training features are L2-normalised once (float32 on the CPU, float16 on
a GPU) and the test set is processed in chunks of ``query_chunk`` rows against
training chunks of ``train_chunk`` rows, so the largest temporary is
``query_chunk x train_chunk`` similarities (1024 x 32768 floats = 128 MiB by default)
whatever the number of patches: a million 512-d training patches need 2 GiB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .metrics import patch_classification_metrics


def _normalised(x: np.ndarray | torch.Tensor, dtype: torch.dtype, device: str, chunk: int) -> torch.Tensor:
    src = torch.as_tensor(x)
    out = torch.empty(src.shape, dtype=dtype, device=device)
    for start in range(0, src.shape[0], chunk):
        block = src[start : start + chunk].to(device=device, dtype=torch.float32)
        out[start : start + chunk] = torch.nn.functional.normalize(block, dim=1).to(dtype)
    return out


@torch.no_grad()
def knn_top1(
    train: np.ndarray | torch.Tensor,
    test: np.ndarray | torch.Tensor,
    *,
    query_chunk: int = 1024,
    train_chunk: int = 32768,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Index of each test row's most cosine-similar training row, and that similarity.

    Ties go to the lowest training index.
    """
    from tqdm.auto import tqdm

    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"KNN needs training and test patches, got {len(train)} and {len(test)}")
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train features are {train.shape[1]}-d but test features {test.shape[1]}-d")
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    bank = _normalised(train, dtype, device, train_chunk)
    queries = torch.as_tensor(test)
    best_idx = np.empty(len(test), dtype=np.int64)
    best_sim = np.empty(len(test), dtype=np.float32)
    for q0 in tqdm(range(0, len(test), query_chunk), desc="knn", disable=not progress, leave=False):
        q = torch.nn.functional.normalize(
            queries[q0 : q0 + query_chunk].to(device=device, dtype=torch.float32), dim=1
        ).to(dtype)
        sim = torch.full((q.shape[0],), float("-inf"), device=device)
        idx = torch.zeros(q.shape[0], dtype=torch.long, device=device)
        for t0 in range(0, bank.shape[0], train_chunk):
            s, i = (q @ bank[t0 : t0 + train_chunk].T).float().max(dim=1)
            better = s > sim  # strict: earlier chunks win ties
            sim = torch.where(better, s, sim)
            idx = torch.where(better, i + t0, idx)
        best_idx[q0 : q0 + len(q)] = idx.cpu().numpy()
        best_sim[q0 : q0 + len(q)] = sim.cpu().numpy()
    return best_idx, best_sim


def bootstrap_f1_accuracy(
    y_true: np.ndarray, y_pred: np.ndarray, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict:
    """Percentile bootstrap intervals of macro F1 and accuracy over the test patches (resampled with replacement).

    Macro F1 of a resample averages the classes present in its labels or predictions, as
    ``sklearn.metrics.f1_score(average='macro')`` does."""
    classes, t = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    t, p = t[: len(y_true)], t[len(y_true) :]
    rng = np.random.default_rng(seed)
    macro, acc = np.empty(resamples), np.empty(resamples)
    chunk = max(1, 10_000_000 // max(len(t), 1))  # at most ~10M resampled indices in memory
    for r0 in range(0, resamples, chunk):
        idx = rng.integers(0, len(t), size=(min(chunk, resamples - r0), len(t)))
        tt, pp = t[idx], p[idx]
        f1_sum, present = np.zeros(len(idx)), np.zeros(len(idx))
        for c in range(len(classes)):
            tp = ((tt == c) & (pp == c)).sum(1)
            support = (tt == c).sum(1) + (pp == c).sum(1)
            f1_sum += np.where(support > 0, 2 * tp / np.maximum(support, 1), 0.0)
            present += support > 0
        macro[r0 : r0 + len(idx)] = f1_sum / present
        acc[r0 : r0 + len(idx)] = (tt == pp).mean(1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {
        "f1_macro_ci95": [float(v) for v in np.percentile(macro, q)],
        "accuracy_ci95": [float(v) for v in np.percentile(acc, q)],
        "bootstrap": {"resamples": resamples, "seed": seed, "level": level, "method": "percentile, test patches"},
    }


def knn_evaluate(
    train: np.ndarray,
    train_labels: Sequence,
    test: np.ndarray,
    test_labels: Sequence,
    *,
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    **options,
) -> dict:
    """Top-1 cosine KNN from train to test: macro F1 and accuracy (scikit-learn metrics), with bootstrap
    95 % intervals over the test patches (``bootstrap`` resamples; 0: none)."""
    train_labels = np.asarray(train_labels)
    idx, _ = knn_top1(train, test, **options)
    predicted = train_labels[idx]
    out = patch_classification_metrics(np.asarray(test_labels), predicted)
    out.update(n_train=int(len(train)), n_test=int(len(test)))
    if bootstrap:
        out.update(bootstrap_f1_accuracy(np.asarray(test_labels), predicted, resamples=bootstrap, seed=bootstrap_seed))
    return out
