"""CUDA kernels: parity, in-kernel Philox noise, no host sync, CUDA graphs, determinism.

Skipped on machines without a GPU or without the CUDA kernels built; run them on
a GPU machine with benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import pytest
import torch
from cluster_loss_cases import TOLERANCES, assert_close_grad, loss_and_grad, make_inputs

import clusiam_fast as cf

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not (torch.cuda.is_available() and cf.fused_available("cuda")),
        reason="needs a CUDA GPU and the CUDA kernels (build with CUDA_HOME set)",
    ),
]

SHAPES = [(1, 1, 1), (5, 3, 17), (64, 10, 33), (257, 100, 129), (1000, 1000, 31), (3001, 50, 2048), (4096, 1000, 2048)]


@pytest.mark.parametrize("M,K,D", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "one_active", "few_rows"])
def test_cuda_matches_reference(M, K, D, kind):
    z, logits, gumbel = make_inputs(M, K, D, kind=kind, device="cuda", seed=M + K)
    loss, grad, idx = loss_and_grad("fused", z, logits, gumbel)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference", z, logits, gumbel)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tau,upstream", [(0.5, 1.0), (1.0, -0.3), (2.0, 2.0)])
def test_cuda_dtypes_tau_upstream(dtype, tau, upstream):
    z, logits, gumbel = make_inputs(777, 64, 257, dtype=dtype, device="cuda", seed=1)
    loss_atol, grad_rel = TOLERANCES[dtype]
    loss, grad, idx = loss_and_grad("fused", z, logits, gumbel, tau=tau, upstream=upstream)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference-float32", z, logits, gumbel, tau=tau, upstream=upstream)
    assert grad.dtype == dtype and torch.equal(idx, ref_idx)
    torch.testing.assert_close(loss, ref_loss, atol=loss_atol, rtol=1e-4)
    assert_close_grad(grad, ref_grad, grad_rel)


def test_cuda_matches_cpu_kernels_on_non_contiguous_inputs():
    z, logits, gumbel = make_inputs(300, 30, 70, seed=3)
    cpu = loss_and_grad("fused", z, logits, gumbel)
    transposed = lambda t: t.cuda().t().contiguous().t()  # column-major copies
    gpu = loss_and_grad("fused", transposed(z), transposed(logits.detach()), transposed(gumbel))
    assert torch.equal(cpu[2], gpu[2].cpu())
    torch.testing.assert_close(cpu[0], gpu[0].cpu(), atol=1e-6, rtol=1e-5)
    assert_close_grad(gpu[1].cpu(), cpu[1], 1e-5)


def test_philox_noise_is_gumbel_and_reproducible():
    """Gumbel-max trick: argmax(log p + g) ~ Categorical(p); same seed, same draw."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], device="cuda")
    M = 400_000
    logits = p.log().expand(M, 4).contiguous()
    z = torch.randn(M, 8, device="cuda")
    torch.manual_seed(7)
    _, idx = cf.cluster_loss(z, logits, impl="fused", return_assignments=True)
    freq = torch.bincount(idx, minlength=4).float() / M
    torch.testing.assert_close(freq, p, atol=4e-3, rtol=0)
    torch.manual_seed(7)
    _, again = cf.cluster_loss(z, logits, impl="fused", return_assignments=True)
    assert torch.equal(idx, again)
    _, other = cf.cluster_loss(z, logits, impl="fused", return_assignments=True)
    assert not torch.equal(idx, other)


def test_no_host_sync_and_deterministic():
    z, logits, gumbel = make_inputs(2048, 100, 512, device="cuda", seed=5)
    torch.cuda.set_sync_debug_mode("error")
    try:
        first = cf.cluster_loss(z, logits, gumbel=gumbel, impl="fused")
        first.backward()
        grad1 = logits.grad.clone()
        logits.grad = None
        second = cf.cluster_loss(z, logits, gumbel=gumbel, impl="fused")
        second.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(first, second) and torch.equal(grad1, logits.grad)


def test_cuda_graph_capture_and_replay():
    z, logits, gumbel = make_inputs(512, 32, 128, device="cuda", seed=6)
    static_logits = logits.detach().clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (allocator, cuBLAS handles) outside the capture
        for _ in range(2):
            static_logits.grad = None
            cf.cluster_loss(z, static_logits, impl="fused").backward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    static_logits.grad = None
    with torch.cuda.graph(graph):
        static_loss = cf.cluster_loss(z, static_logits, impl="fused")  # Philox noise drawn in-kernel
        static_loss.backward()
    losses = set()
    for _ in range(3):
        graph.replay()
        losses.add(static_loss.item())
    assert len(losses) == 3  # fresh noise each replay (graph-safe Philox offsets)
    torch.testing.assert_close(static_logits.grad.abs().sum() > 0, torch.tensor(True, device="cuda"))


def test_cuda_opcheck():
    z, logits, gumbel = make_inputs(37, 6, 11, device="cuda", seed=3)
    torch.library.opcheck(torch.ops.clusiam.assign_pool.default, (z, logits, gumbel, 0.7, 1e-8))
    y, _idx, inv_norm, sums, counts = torch.ops.clusiam.assign_pool(z, logits.detach(), gumbel, 1.0, 1e-8)
    torch.library.opcheck(torch.ops.clusiam.centroid_loss.default, (sums.requires_grad_(), counts, 1e-8))


def test_cuda_compile_fullgraph():
    z, logits, gumbel = make_inputs(256, 16, 64, device="cuda", seed=2)
    compiled = torch.compile(lambda z, l, g: cf.cluster_loss(z, l, gumbel=g, impl="fused"), fullgraph=True)
    torch.testing.assert_close(compiled(z, logits, gumbel), cf.cluster_loss(z, logits, gumbel=gumbel, impl="fused"))
