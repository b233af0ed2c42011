"""The CluSiam cluster loss: :func:`cluster_loss`, the :class:`ClusterLoss` module and the fused path.

Wu et al., "Improving Representation Learning for Histopathologic Images with Cluster
Constraints", ICCV 2023. The fused path is ``torch.ops.clusiam.assign_pool`` ->
(all-reduce under DDP) -> ``torch.ops.clusiam.centroid_loss``; kernels in ``csrc/cpu``
and ``csrc/cuda``, fake kernels and autograd in :mod:`._registration`, the published
computation in :mod:`.cluster_loss_reference`.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..choices import CLUSTER_LOSS_IMPLS
from . import cluster_loss_reference as reference
from ._distributed import all_reduce_sums, resolve_group
from ._extension import FUSED_DEVICE_TYPES, LOAD_ERROR
from .cluster_loss_reference import sample_gumbel

if LOAD_ERROR is None:
    from . import _registration  # noqa: F401  (fake kernels and autograd of torch.ops.clusiam.*)

IMPLS = CLUSTER_LOSS_IMPLS  # the one table of names (clusiam_fast/choices.py)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_warned_fallback: set[str] = set()


def cluster_loss(
    z: torch.Tensor,
    logits: torch.Tensor,
    *,
    tau: float = 1.0,
    gumbel: torch.Tensor | None = None,
    eps: float = 1e-8,
    impl: str = "auto",
    process_group=None,
    return_assignments: bool = False,
):
    """CluSiam cluster loss: mean cosine similarity between the centroids of the clusters.

    Each row of ``logits`` is assigned to a cluster by a Gumbel-softmax straight-through
    argmax; the centroids of the L2-normalised rows of ``z`` are normalised, and the loss
    is the mean of their pairwise cosine similarities (1.0 when fewer than two clusters
    are used). Minimising it pushes the centroids apart.

    Args:
        z: (M, D) projections of both views, concatenated. Treated as constant (no gradient).
        logits: (M, K) cluster-assigner outputs; the gradient flows here.
        tau: softmax temperature (> 0).
        gumbel: (M, K) Gumbel(0, 1) noise, or None to sample it from torch's generator
            (reproducible under ``torch.manual_seed``). Pass zeros for no noise.
        eps: norm floor.
        impl: "fused" (compiled kernels), "reference" (pure PyTorch, the published
            code's computation) or "auto" (fused when built, else reference with a warning).
        process_group: None, "default" (the initialised default group) or a ProcessGroup:
            centroids over the global batch, gradients scaled for DDP's averaging.
        return_assignments: also return the (M,) int64 cluster index of each row.

    Returns:
        The 0-dim float32 loss, and the assignments when asked for.

    Precision: everything is computed in float32. On CUDA the backward's one matrix
    product follows ``torch.backends.cuda.matmul.allow_tf32`` (off by default) for float32
    ``z``; for float16 / bfloat16 ``z`` it multiplies ``z`` in its own dtype by a hi + lo
    split of the float32 gradient, accumulating in float32 (no float32 copy of ``z``).

    Example::

        z, p, logits = ..., ..., ...                # SimSiam outputs plus an assigner head
        loss = (1 - alpha) * simsiam_loss + alpha * clusiam_fast.cluster_loss(z.detach(), logits)
    """
    _check_args(z, logits, gumbel, tau, eps)
    group = resolve_group(process_group)
    if _choose_impl(impl, z.device) == "reference":
        return reference.cluster_loss(
            z, logits, tau=tau, gumbel=gumbel, eps=eps, process_group=group, return_assignments=return_assignments
        )
    return _fused(z, logits, tau=tau, gumbel=gumbel, eps=eps, group=group, return_assignments=return_assignments)


class ClusterLoss(nn.Module):
    """CluSiam cluster loss as a module; see :func:`cluster_loss`.

    Example::

        criterion = ClusterLoss(tau=1.0)
        loss = criterion(torch.cat([z1, z2]).detach(), torch.cat([a1, a2]))
    """

    def __init__(self, tau: float = 1.0, eps: float = 1e-8, impl: str = "auto", process_group=None):
        super().__init__()
        self.tau, self.eps, self.impl, self.process_group = tau, eps, impl, process_group

    def forward(self, z: torch.Tensor, logits: torch.Tensor, gumbel: torch.Tensor | None = None) -> torch.Tensor:
        return cluster_loss(
            z, logits, tau=self.tau, gumbel=gumbel, eps=self.eps, impl=self.impl, process_group=self.process_group
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, eps={self.eps}, impl={self.impl!r}"


def fused_available(device: str | torch.device = "cpu") -> bool:
    """True when the fused cluster-loss kernels are compiled for ``device``'s type."""
    return torch.device(device).type in FUSED_DEVICE_TYPES


def _fused(z, logits, *, tau, gumbel, eps, group, return_assignments):
    """assign_pool -> all-reduce -> centroid_loss; inputs already checked, group None or a ProcessGroup."""
    z = z.detach()
    if z.dtype == torch.float64:  # the kernels compute in float32 anyway
        z = z.float()
    if logits.dtype == torch.float64:
        logits = logits.float()
    if gumbel is None and z.device.type == "cpu":
        gumbel = sample_gumbel(logits)  # the one sampler; CUDA draws the same law in-kernel (Philox)
    _y, idx, _inv_norm, sums, counts = torch.ops.clusiam.assign_pool(z, logits, gumbel, float(tau), float(eps))
    sums, counts = all_reduce_sums(sums, counts, group)
    loss = torch.ops.clusiam.centroid_loss(sums, counts, float(eps))[0]
    return (loss, idx) if return_assignments else loss


def _choose_impl(impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise ValueError(f"cluster_loss: `impl` must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return impl
    if device.type in FUSED_DEVICE_TYPES:
        return "fused"
    why = (
        f"the clusiam_fast._C extension did not load ({LOAD_ERROR})"
        if LOAD_ERROR is not None
        else f"it was built without {device.type.upper()} kernels"
    )
    if impl == "fused":
        raise RuntimeError(
            f"cluster_loss(impl='fused') on {device.type}: {why}. Rebuild with "
            "`pip install --no-build-isolation -e .` (set CUDA_HOME for the CUDA kernels) "
            "or use impl='reference'."
        )
    if device.type not in _warned_fallback:
        _warned_fallback.add(device.type)
        warnings.warn(f"cluster_loss: using the slower reference on {device.type}: {why}", stacklevel=3)
    return "reference"


def _check_args(z: torch.Tensor, logits: torch.Tensor, gumbel, tau: float, eps: float) -> None:
    """Each error names the argument and says what to do."""
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
                f"cluster_loss: `{name}` has dtype {t.dtype}; pass float32, float16 or bfloat16 (cast with .float())"
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
            f"cluster_loss: `z` {tuple(z.shape)} and `logits` {tuple(logits.shape)} must have at least one column"
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
