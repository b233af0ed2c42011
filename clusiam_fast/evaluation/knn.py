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


def knn_evaluate(train: np.ndarray, train_labels: Sequence, test: np.ndarray, test_labels: Sequence, **options) -> dict:
    """Top-1 cosine KNN from train to test: macro F1 and accuracy (scikit-learn metrics)."""
    train_labels = np.asarray(train_labels)
    idx, _ = knn_top1(train, test, **options)
    predicted = train_labels[idx]
    out = patch_classification_metrics(np.asarray(test_labels), predicted)
    out.update(n_train=int(len(train)), n_test=int(len(test)))
    return out
