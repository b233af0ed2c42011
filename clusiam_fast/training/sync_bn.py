"""``--sync-bn`` on the CPU: BatchNorm whose batch statistics span every torchrun process (gloo).

PyTorch's ``SyncBatchNorm`` runs only on GPUs. :class:`ProcessGroupBatchNorm` does the
same on any device with plain collectives: per BatchNorm call one all-reduce of
(sum, sum of squares, count) in float64 forward, one of (sum dy, sum dy * x_hat)
backward. So a CPU run of N processes x B images normalises over the global N x B
batch, as one process with batch N x B does (the gradient convention is PyTorch's: each
rank's dy is summed, DDP then averages the parameter gradients).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SyncBatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xd = x.double()
        packed = torch.cat([xd.sum(dims), (xd * xd).sum(dims), xd.new_tensor([x.numel() // x.size(1)])])
        dist.all_reduce(packed)
        channels = x.size(1)
        count = packed[-1]
        mean = packed[:channels] / count
        var = (packed[channels : 2 * channels] / count - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps)
        x_hat = ((xd - mean.view(shape)) * invstd.view(shape)).to(x.dtype)
        y = x_hat
        if weight is not None:
            y = y * weight.view(shape)
        if bias is not None:
            y = y + bias.view(shape)
        ctx.save_for_backward(x_hat, weight, invstd.to(x.dtype), count)
        ctx.dims, ctx.shape = dims, shape
        ctx.has_bias = bias is not None
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        ctx.mark_non_differentiable(mean, var, count)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, grad_y, _mean, _var, _count):
        x_hat, weight, invstd, count = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        sum_dy = grad_y.sum(dims)
        sum_dy_xhat = (grad_y * x_hat).sum(dims)
        grad_weight = sum_dy_xhat if weight is not None else None  # this rank's share; DDP averages
        grad_bias = sum_dy.clone() if ctx.has_bias else None
        packed = torch.cat([sum_dy, sum_dy_xhat]).double()
        dist.all_reduce(packed)
        channels = sum_dy.numel()
        mean_dy = (packed[:channels] / count).to(grad_y.dtype).view(shape)
        mean_dy_xhat = (packed[channels:] / count).to(grad_y.dtype).view(shape)
        scale = invstd.view(shape) if weight is None else (weight * invstd).view(shape)
        grad_x = scale * (grad_y - mean_dy - x_hat * mean_dy_xhat)
        return grad_x, grad_weight, grad_bias, None


class ProcessGroupBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all processes of the default group (any device, any backend).

    Outside training, or without an initialised process group of more than one process,
    it is an ordinary BatchNorm. Its state dict is a BatchNorm's.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        y, mean, var, count = _SyncBatchNormFn.apply(x, self.weight, self.bias, self.eps)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():  # running statistics as _BatchNorm keeps them (unbiased variance)
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                self.running_var.mul_(1 - factor).add_(var * (n / max(n - 1, 1)), alpha=factor)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm replaced by a :class:`ProcessGroupBatchNorm` holding its tensors."""
    if isinstance(module, _BatchNorm) and not isinstance(module, ProcessGroupBatchNorm):
        out = ProcessGroupBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
        return out
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module
