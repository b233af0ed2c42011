"""Fake (meta) kernels and autograd formulas of the torch.ops.clusiam ops.

The schemas and the CPU / CUDA kernels are in csrc/. Imported by
:mod:`clusiam_fast.ops.cluster_loss` once the extension is loaded. The fake kernels
check shapes with ``torch._check`` so that torch.compile reports bad inputs at trace time.
"""

import torch

_F32 = torch.float32


@torch.library.register_fake("clusiam::assign_pool")
def _assign_pool_fake(z, logits, gumbel, tau, eps):
    torch._check(z.dim() == 2 and logits.dim() == 2, lambda: "clusiam::assign_pool: z and logits must be 2-D")
    M, D = z.shape
    K = logits.shape[1]
    torch._check(logits.shape[0] == M, lambda: f"clusiam::assign_pool: z has {M} rows, logits {logits.shape[0]}")
    if gumbel is not None:
        torch._check(gumbel.shape == logits.shape, lambda: "clusiam::assign_pool: gumbel must have the logits' shape")
    return (
        logits.new_empty((M, K), dtype=_F32),
        logits.new_empty((M,), dtype=torch.int64),
        z.new_empty((M,), dtype=_F32),
        z.new_empty((K, D), dtype=_F32),
        z.new_empty((K,), dtype=_F32),
    )


@torch.library.register_fake("clusiam::assign_pool_backward")
def _assign_pool_backward_fake(grad_sums, z, y, inv_norm, tau, dtype):
    torch._check(z.shape[0] == y.shape[0], lambda: "clusiam::assign_pool_backward: z and y must have the same M")
    torch._check(
        grad_sums.shape == (y.shape[1], z.shape[1]),
        lambda: "clusiam::assign_pool_backward: grad_sums must be (K, D)",
    )
    return y.new_empty(y.shape, dtype=dtype)


@torch.library.register_fake("clusiam::centroid_loss")
def _centroid_loss_fake(sums, counts, eps):
    torch._check(sums.dim() == 2, lambda: "clusiam::centroid_loss: sums must be 2-D (K, D)")
    K, D = sums.shape
    torch._check(counts.shape == (K,), lambda: "clusiam::centroid_loss: counts must be (K,)")
    return sums.new_empty(()), sums.new_empty((K, D)), sums.new_empty((K,)), sums.new_empty((D,))


@torch.library.register_fake("clusiam::centroid_loss_backward")
def _centroid_loss_backward_fake(grad, chat, inv_snorm, csum, counts):
    torch._check(grad.numel() == 1, lambda: "clusiam::centroid_loss_backward: grad must hold one value")
    return chat.new_empty(chat.shape)


# assign_pool: the sums carry the straight-through gradient back to the logits.
def _assign_pool_setup(ctx, inputs, output):
    z, logits, _gumbel, tau, _eps = inputs
    y, _idx, inv_norm, _sums, counts = output
    ctx.mark_non_differentiable(y, inv_norm, counts)  # only the sums carry a gradient
    ctx.set_materialize_grads(False)  # no zero tensors for the outputs without one
    ctx.save_for_backward(z, y, inv_norm)
    ctx.tau = tau
    ctx.logits_dtype = logits.dtype


def _assign_pool_backward(ctx, grad_y, grad_idx, grad_inv_norm, grad_sums, grad_counts):
    if grad_sums is None:
        return None, None, None, None, None
    z, y, inv_norm = ctx.saved_tensors
    grad_logits = torch.ops.clusiam.assign_pool_backward(grad_sums, z, y, inv_norm, ctx.tau, ctx.logits_dtype)
    return None, grad_logits, None, None, None


torch.library.register_autograd("clusiam::assign_pool", _assign_pool_backward, setup_context=_assign_pool_setup)


# centroid_loss: only the loss is differentiated; chat, inv_snorm, csum are saved state.
def _centroid_loss_setup(ctx, inputs, output):
    _sums, counts, _eps = inputs
    _loss, chat, inv_snorm, csum = output
    ctx.mark_non_differentiable(chat, inv_snorm, csum)  # only the loss carries a gradient
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(chat, inv_snorm, csum, counts)


def _centroid_loss_backward(ctx, grad_loss, grad_chat, grad_inv_snorm, grad_csum):
    if grad_loss is None:
        return None, None, None
    chat, inv_snorm, csum, counts = ctx.saved_tensors
    return torch.ops.clusiam.centroid_loss_backward(grad_loss, chat, inv_snorm, csum, counts), None, None


torch.library.register_autograd("clusiam::centroid_loss", _centroid_loss_backward, setup_context=_centroid_loss_setup)
