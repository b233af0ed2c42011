"""--sync-bn on the CPU: ProcessGroupBatchNorm over two real gloo processes == BatchNorm over the whole batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from clusiam_fast.training.sync_bn import ProcessGroupBatchNorm, convert_batchnorm


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
        nn.BatchNorm1d(5, affine=False),
    )


def _batch() -> torch.Tensor:
    return torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 + 0.5


def _loss(out: torch.Tensor) -> torch.Tensor:
    return (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).sin()).sum() / 8


def _worker(rank: int, world: int, store: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        net = convert_batchnorm(_net())
        x = _batch()[rank * 4 : (rank + 1) * 4].requires_grad_()
        out = net(x)
        # as under DDP, each rank's loss is the mean over its own part of the batch (world x its share)
        padded = torch.cat([torch.zeros_like(out)] * rank + [out] + [torch.zeros_like(out)] * (world - 1 - rank))
        (_loss(padded) * world).backward()
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        for g in grads.values():  # DDP's average
            dist.all_reduce(g)
            g /= world
        results[rank] = (out.detach(), x.grad.clone(), grads, {k: v.clone() for k, v in net.state_dict().items()})
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_normalise_over_the_whole_batch(tmp_path):
    plain = _net()
    x = _batch().requires_grad_()
    out = plain(x)
    _loss(out).backward()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "store"), results), nprocs=2)
        results = dict(results)
    synced_out = torch.cat([results[0][0], results[1][0]])
    torch.testing.assert_close(synced_out, out.detach(), rtol=1e-5, atol=1e-5)
    # PyTorch's SyncBatchNorm convention: dy is summed over ranks, so inputs get world x the gradient of the
    # mean loss, and the parameters, once DDP has averaged them, exactly the single-process gradient
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), 2 * x.grad, rtol=1e-5, atol=1e-6)
    for name, p in plain.named_parameters():
        torch.testing.assert_close(results[0][2][name], p.grad, rtol=1e-5, atol=1e-6)
    for key, value in plain.state_dict().items():  # running statistics and their count, same keys
        torch.testing.assert_close(results[0][3][key], value, rtol=1e-5, atol=1e-6)


def test_outside_a_group_it_is_a_batchnorm():
    plain = _net()
    converted = convert_batchnorm(copy.deepcopy(plain))
    assert sum(isinstance(m, ProcessGroupBatchNorm) for m in converted.modules()) == 2
    assert converted.state_dict().keys() == plain.state_dict().keys()
    torch.testing.assert_close(converted(_batch()), plain(_batch()))
    converted.eval(), plain.eval()
    torch.testing.assert_close(converted(_batch()), plain(_batch()))
    with pytest.raises(ValueError, match="2D"):
        converted[1](torch.zeros(3))
