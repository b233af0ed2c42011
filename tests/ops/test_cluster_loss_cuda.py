"""CUDA kernels: parity, in-kernel Philox noise, no host sync, CUDA graphs, determinism.

Skipped on machines without a GPU or without the CUDA kernels built; run them on
a GPU machine with benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import pytest
import torch
from cluster_loss_cases import TOLERANCES, assert_close_grad, loss_and_grad, make_inputs

import clusiam_fast as cf


def _missing() -> str | None:
    """What these tests lack here, in words: a GPU, the CUDA kernels, or both."""
    gpu, built = torch.cuda.is_available(), cf.fused_available("cuda")
    if gpu and built:
        return None
    build = "rebuild with CUDA_HOME set (see python -m clusiam_fast.info)"
    if built:
        return "no CUDA GPU visible (the CUDA kernels are built)"
    return f"the CUDA kernels were not built: {build}" + ("" if gpu else "; and no CUDA GPU is visible")


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]

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
@pytest.mark.parametrize("tau,upstream", [(0.5, 1.0), (1.0, -0.3), (2.0, 2.0), (0.3, 1.0), (0.7, -1.5)])
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


@pytest.mark.parametrize("tau", [0.3, 0.7])
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "few_rows"])
def test_cuda_matches_cpu_kernels_tau(tau, kind):
    """1 / tau is inexact: both kernels multiply by 1.f / float(tau), the same assignments."""
    z, logits, gumbel = make_inputs(1000, 50, 33, kind=kind, seed=21)
    cpu = loss_and_grad("fused", z, logits, gumbel, tau=tau)
    gpu = loss_and_grad("fused", z.cuda(), logits.detach().cuda(), gumbel.cuda(), tau=tau)
    assert torch.equal(cpu[2], gpu[2].cpu())
    torch.testing.assert_close(cpu[0], gpu[0].cpu(), atol=1e-6, rtol=1e-5)
    assert_close_grad(gpu[1].cpu(), cpu[1], 1e-5)


@pytest.mark.parametrize("D", [32, 300])
def test_cuda_one_dominant_cluster(D):
    """400k rows, ~99% in one cluster (12k pooling chunks): against the reference and the CPU kernels."""
    z, logits, gumbel = make_inputs(400_000, 100, D, kind="dominant", seed=12)
    cpu_out = torch.ops.clusiam.assign_pool(z, logits.detach(), gumbel, 1.0, 1e-8)
    zc, lc, gc = z.cuda(), logits.detach().cuda().requires_grad_(), gumbel.cuda()
    loss, grad, idx = loss_and_grad("fused", zc, lc, gc)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference", zc, lc, gc)
    assert torch.equal(idx, ref_idx) and torch.equal(idx.cpu(), cpu_out[1])
    assert (idx == 100 // 3).float().mean() > 0.98
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)
    gpu_out = torch.ops.clusiam.assign_pool(zc, lc.detach(), gc, 1.0, 1e-8)
    torch.testing.assert_close(gpu_out[3].cpu(), cpu_out[3], atol=4e-3, rtol=1e-5)  # CPU error vs float64: 6e-4
    assert torch.equal(gpu_out[4].cpu(), cpu_out[4])


@pytest.mark.parametrize("kind", ["normal", "dominant", "few_rows", "one_active"])
def test_cuda_counting_sort_is_deterministic(kind):
    """Same outputs bit for bit twice; assignments and counts as the CPU kernels."""
    z, logits, gumbel = make_inputs(70_001, 300, 65, kind=kind, seed=4)
    cpu_out = torch.ops.clusiam.assign_pool(z, logits.detach(), gumbel, 0.7, 1e-8)
    zc, lc, gc = z.cuda(), logits.detach().cuda(), gumbel.cuda()
    first = torch.ops.clusiam.assign_pool(zc, lc, gc, 0.7, 1e-8)
    second = torch.ops.clusiam.assign_pool(zc, lc, gc, 0.7, 1e-8)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(first[1].cpu(), cpu_out[1]) and torch.equal(first[4].cpu(), cpu_out[4])
    torch.testing.assert_close(first[3].cpu(), cpu_out[3], atol=5e-4, rtol=1e-5)  # CPU error vs float64: 9e-5


def test_cuda_backward_float64_output_as_cpu():
    """A dtype outside float32/float16/bfloat16 (direct op calls only) is computed in float32 and converted."""
    z, logits, gumbel = make_inputs(100, 12, 20, device="cuda", seed=9)
    y, _idx, inv_norm, sums, _counts = torch.ops.clusiam.assign_pool(z, logits.detach(), gumbel, 0.3, 1e-8)
    grad_sums = torch.randn_like(sums)
    g64 = torch.ops.clusiam.assign_pool_backward(grad_sums, z, y, inv_norm, 0.3, torch.float64)
    g32 = torch.ops.clusiam.assign_pool_backward(grad_sums, z, y, inv_norm, 0.3, torch.float32)
    assert g64.dtype == torch.float64 and torch.equal(g64, g32.double())


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
