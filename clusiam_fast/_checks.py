"""Argument checks for cluster_loss: each error names the argument and says what to do."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_cluster_loss_args(z: torch.Tensor, logits: torch.Tensor, gumbel, tau: float, eps: float) -> None:
    for name, t in (("z", z), ("logits", logits), ("gumbel", gumbel)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"cluster_loss: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(
                f"cluster_loss: `{name}` must be 2-D ({'M, D' if name == 'z' else 'M, K'}), "
                f"got shape {tuple(t.shape)}; flatten or concatenate the views first"
            )
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"cluster_loss: `{name}` has dtype {t.dtype}; pass float32, float16 or bfloat16 "
                f"(cast with .float())"
            )
    if z.shape[0] != logits.shape[0]:
        raise ValueError(
            f"cluster_loss: `z` has {z.shape[0]} rows but `logits` has {logits.shape[0]}; "
            "both must hold one row per sample (concatenate both views in the same order)"
        )
    if z.shape[0] == 0:
        raise ValueError("cluster_loss: empty batch (`z` and `logits` have 0 rows)")
    if z.shape[1] == 0 or logits.shape[1] == 0:
        raise ValueError(
            f"cluster_loss: `z` {tuple(z.shape)} and `logits` {tuple(logits.shape)} must have "
            "at least one column"
        )
    if gumbel is not None and gumbel.shape != logits.shape:
        raise ValueError(
            f"cluster_loss: `gumbel` has shape {tuple(gumbel.shape)} but `logits` has "
            f"{tuple(logits.shape)}; pass noise of the logits' shape or gumbel=None"
        )
    devices = {t.device for t in (z, logits, gumbel) if t is not None}
    if len(devices) > 1:
        raise ValueError(
            f"cluster_loss: `z`, `logits` and `gumbel` must be on one device, got "
            f"{sorted(str(d) for d in devices)}; move them with .to(device)"
        )
    if not (isinstance(tau, (int, float)) and tau > 0):
        raise ValueError(f"cluster_loss: `tau` must be a number > 0, got {tau!r}")
    if not (isinstance(eps, (int, float)) and eps >= torch.finfo(torch.float32).tiny):
        raise ValueError(f"cluster_loss: `eps` must be a float32-representable number > 0 (>= 1.2e-38), got {eps!r}")
