"""Fake (meta) kernels and autograd formulas of the torch.ops.clusiam ops.

The schemas and the CPU / CUDA kernels are in csrc/. Imported once the
extension is loaded (see clusiam_fast/ops/fused.py).
"""

import torch

_F32 = torch.float32


@torch.library.register_fake("clusiam::assign_pool")
def _assign_pool_fake(z, logits, gumbel, tau, eps):
    M, D = z.shape
    K = logits.shape[1]
    return (
        logits.new_empty((M, K), dtype=_F32),
        logits.new_empty((M,), dtype=torch.int64),
        z.new_empty((M,), dtype=_F32),
        z.new_empty((K, D), dtype=_F32),
        z.new_empty((K,), dtype=_F32),
    )


@torch.library.register_fake("clusiam::assign_pool_backward")
def _assign_pool_backward_fake(grad_sums, z, y, inv_norm, tau, dtype):
    return y.new_empty(y.shape, dtype=dtype)


@torch.library.register_fake("clusiam::centroid_loss")
def _centroid_loss_fake(sums, counts, eps):
    K, D = sums.shape
    return sums.new_empty(()), sums.new_empty((K, D)), sums.new_empty((K,)), sums.new_empty((D,))


@torch.library.register_fake("clusiam::centroid_loss_backward")
def _centroid_loss_backward_fake(grad, chat, inv_snorm, csum, counts):
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


torch.library.register_autograd(
    "clusiam::centroid_loss", _centroid_loss_backward, setup_context=_centroid_loss_setup
)
