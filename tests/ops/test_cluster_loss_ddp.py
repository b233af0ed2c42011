"""Two real gloo processes: global centroids, and DDP gradients equal to one process's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import clusiam_fast as cf

M, D, F, K = 64, 24, 16, 10
SPLIT = (30, 34)  # uneven local batches


def _inputs():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(M, D, generator=gen)
    x = torch.randn(M, F, generator=gen)
    gumbel = -torch.empty(M, K).exponential_(generator=gen).log()
    assigner = torch.nn.Linear(F, K)
    with torch.no_grad():
        assigner.weight.copy_(torch.randn(K, F, generator=gen))
        assigner.bias.copy_(torch.randn(K, generator=gen))
    return z, x, gumbel, assigner


def _worker(rank: int, world: int, init_file: str, impl: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z, x, gumbel, assigner = _inputs()
        # One process over the concatenated batch.
        single = copy.deepcopy(assigner)
        loss_single = cf.cluster_loss(z, single(x), gumbel=gumbel, impl=impl)
        loss_single.backward()

        lo = sum(SPLIT[:rank])
        rows = slice(lo, lo + SPLIT[rank])
        model = DDP(copy.deepcopy(assigner))
        loss, idx = cf.cluster_loss(
            z[rows], model(x[rows]), gumbel=gumbel[rows], impl=impl, process_group="default", return_assignments=True
        )
        loss.backward()  # DDP averages the parameter gradients over the two ranks

        torch.testing.assert_close(loss, loss_single, atol=1e-6, rtol=1e-5)
        for p_ddp, p_single in zip(model.module.parameters(), single.parameters()):
            torch.testing.assert_close(p_ddp.grad, p_single.grad, atol=1e-6, rtol=1e-4)
        assert p_single.grad.abs().max() > 0
        _, idx_single = cf.cluster_loss(z, assigner(x), gumbel=gumbel, impl=impl, return_assignments=True)
        assert torch.equal(idx, idx_single[rows])
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_ddp_matches_single_process(tmp_path, impl):
    if impl == "fused" and not cf.fused_available("cpu"):
        pytest.skip("clusiam_fast._C was not built")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), impl), nprocs=2, join=True)
