"""The fused cluster loss against the published computation (reference): values and gradients."""

from __future__ import annotations

import pytest
import torch
from cluster_loss_cases import TOLERANCES, assert_close_grad, loss_and_grad, make_inputs

import clusiam_fast as cf

pytestmark = pytest.mark.skipif(not cf.fused_available("cpu"), reason="clusiam_fast._C was not built")

SHAPES = [(1, 1, 1), (1, 7, 5), (2, 2, 3), (5, 3, 17), (64, 10, 33), (257, 100, 129), (1000, 1000, 31), (3001, 50, 67)]


@pytest.mark.parametrize("M,K,D", SHAPES)
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "one_active", "few_rows"])
def test_fused_matches_reference(M, K, D, kind):
    z, logits, gumbel = make_inputs(M, K, D, kind=kind, seed=M + K + D)
    loss, grad, idx = loss_and_grad("fused", z, logits, gumbel)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference", z, logits, gumbel)
    assert torch.equal(idx, ref_idx)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)


@pytest.mark.parametrize("tau", [0.3, 0.7])
@pytest.mark.parametrize("kind", ["normal", "peaked", "flat", "few_rows"])
def test_tau_not_a_power_of_two(tau, kind):
    """1 / tau is inexact: the kernels multiply by it as ATen does, so the argmax ties break alike."""
    z, logits, gumbel = make_inputs(1000, 50, 33, kind=kind, seed=21)
    loss, grad, idx = loss_and_grad("fused", z, logits, gumbel, tau=tau)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference", z, logits, gumbel, tau=tau)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)


def test_one_dominant_cluster():
    """400k rows, ~99% in one cluster: long runs in the sorted pooling."""
    z, logits, gumbel = make_inputs(400_000, 100, 32, kind="dominant", seed=12)
    loss, grad, idx = loss_and_grad("fused", z, logits, gumbel)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference", z, logits, gumbel)
    assert torch.equal(idx, ref_idx)
    assert (idx == 100 // 3).float().mean() > 0.98
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("upstream", [1.0, -0.37, 3.5])
def test_temperature_and_upstream_gradient(tau, upstream):
    z, logits, gumbel = make_inputs(300, 24, 47, seed=3)
    loss, grad, _ = loss_and_grad("fused", z, logits, gumbel, tau=tau, upstream=upstream)
    ref_loss, ref_grad, _ = loss_and_grad("reference", z, logits, gumbel, tau=tau, upstream=upstream)
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)
    assert grad.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """Low-precision inputs are upcast exactly and computed in float32; the gradient comes back in
    the logits' dtype. The error against the float32 reference must also be at most about twice
    that of the plain PyTorch computation run in the low precision (flash-attention's rule)."""
    z, logits, gumbel = make_inputs(512, 40, 96, dtype=dtype, seed=11)
    loss_atol, grad_rel = TOLERANCES[dtype]
    loss, grad, idx = loss_and_grad("fused", z, logits, gumbel)
    ref_loss, ref_grad, ref_idx = loss_and_grad("reference-float32", z, logits, gumbel)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(loss, ref_loss, atol=loss_atol, rtol=1e-4)
    assert_close_grad(grad, ref_grad, grad_rel)
    if dtype != torch.float32:
        plain = cf.reference.cluster_loss(z, logits.detach(), gumbel=gumbel, compute_dtype=dtype)
        fused_err = (loss - ref_loss).abs().item()
        plain_err = (plain.float() - ref_loss).abs().item()
        assert fused_err <= max(2 * plain_err, loss_atol)


def test_non_contiguous_inputs():
    z, logits, gumbel = make_inputs(130, 20, 64, seed=5)
    z_nc = z.t().contiguous().t()  # column-major
    logits_nc = torch.stack([logits.detach()] * 2, dim=2).flatten(1)[:, ::2].requires_grad_()  # strided view
    gumbel_nc = gumbel.t().contiguous().t()
    assert not (z_nc.is_contiguous() or logits_nc.is_contiguous() or gumbel_nc.is_contiguous())
    loss, grad, _ = loss_and_grad("fused", z_nc, logits_nc, gumbel_nc)
    ref_loss, ref_grad, _ = loss_and_grad("reference", z, logits, gumbel)
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)


def test_fewer_than_two_clusters_gives_one_and_no_gradient():
    for K in (1, 9):
        z, logits, gumbel = make_inputs(50, K, 8, kind="one_active", seed=2)
        loss, grad, idx = loss_and_grad("fused", z, logits, gumbel)
        assert loss.item() == 1.0
        assert torch.count_nonzero(grad) == 0
        assert idx.unique().numel() == 1


def test_loss_value_on_known_geometry():
    """Three orthogonal unit clusters: mean off-diagonal cosine 0; two opposite ones: -1."""
    z = torch.eye(3).repeat_interleave(2, dim=0)  # rows 0,1 -> e0; 2,3 -> e1; 4,5 -> e2
    logits = torch.eye(3).repeat_interleave(2, dim=0) * 10
    zeros = torch.zeros_like(logits)
    assert abs(cf.cluster_loss(z, logits, gumbel=zeros, impl="fused").item()) < 1e-6
    z2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert cf.cluster_loss(z2, torch.eye(2) * 10, gumbel=torch.zeros(2, 2), impl="fused").item() == pytest.approx(-1.0)


def test_sampled_noise_is_reproducible_and_shared_with_reference():
    z, logits, _ = make_inputs(200, 16, 32, seed=8)
    torch.manual_seed(123)
    a, ia = cf.cluster_loss(z, logits, impl="fused", return_assignments=True)
    torch.manual_seed(123)
    b, ib = cf.cluster_loss(z, logits, impl="fused", return_assignments=True)
    torch.manual_seed(123)
    r, ir = cf.cluster_loss(z, logits, impl="reference", return_assignments=True)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert torch.equal(ia, ir)  # the CPU op draws the same Exp(1) stream as the reference
    torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4)
    c, ic = cf.cluster_loss(z, logits, impl="fused", return_assignments=True)
    assert not torch.equal(ia, ic)  # the next draw differs


def test_no_gradient_into_z_and_module_form():
    z, logits, gumbel = make_inputs(40, 6, 10, seed=1)
    z.requires_grad_()
    loss = cf.ClusterLoss(tau=0.5, impl="fused")(z, logits, gumbel)
    loss.backward()
    assert z.grad is None and logits.grad is not None
    ref = cf.cluster_loss(z, logits, tau=0.5, gumbel=gumbel, impl="reference")
    torch.testing.assert_close(loss, ref, atol=2e-5, rtol=1e-4)
    assert "tau=0.5" in repr(cf.ClusterLoss(tau=0.5))


def test_deterministic_whatever_the_thread_count():
    z, logits, gumbel = make_inputs(1500, 64, 300, seed=4)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(torch.ops.clusiam.assign_pool(z, logits.detach(), gumbel, 1.0, 1e-8))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_float64_inputs_are_computed_in_float32():
    z, logits, gumbel = make_inputs(100, 12, 20, dtype=torch.float64, seed=9)
    loss, grad, _ = loss_and_grad("fused", z, logits, gumbel)
    ref_loss, ref_grad, _ = loss_and_grad("reference-float32", z, logits, gumbel)
    assert grad.dtype == torch.float64
    torch.testing.assert_close(loss, ref_loss, atol=2e-5, rtol=1e-4)
    assert_close_grad(grad, ref_grad, 2e-4)
