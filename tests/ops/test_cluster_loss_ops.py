"""The registered ops: opcheck, torch.compile, argument errors and the fallback policy."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from cluster_loss_cases import assert_close_grad, loss_and_grad, make_inputs

import clusiam_fast as cf

functional = importlib.import_module("clusiam_fast.ops.cluster_loss")  # the module; the package exports the function

fused_cpu = pytest.mark.skipif(not cf.fused_available("cpu"), reason="clusiam_fast._C was not built")


@fused_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_assign_pool(dtype):
    z, logits, gumbel = make_inputs(37, 6, 11, dtype=dtype, seed=3)
    torch.library.opcheck(torch.ops.clusiam.assign_pool.default, (z, logits.detach(), gumbel, 0.7, 1e-8))
    torch.library.opcheck(torch.ops.clusiam.assign_pool.default, (z, logits, gumbel, 0.7, 1e-8))


@fused_cpu
def test_opcheck_centroid_loss_and_backward_ops():
    z, logits, gumbel = make_inputs(50, 8, 12, seed=4)
    y, _idx, inv_norm, sums, counts = torch.ops.clusiam.assign_pool(z, logits.detach(), gumbel, 1.0, 1e-8)
    torch.library.opcheck(torch.ops.clusiam.centroid_loss.default, (sums, counts, 1e-8))
    torch.library.opcheck(torch.ops.clusiam.centroid_loss.default, (sums.requires_grad_(), counts, 1e-8))
    loss, chat, inv_snorm, csum = torch.ops.clusiam.centroid_loss(sums.detach(), counts, 1e-8)
    grad = torch.tensor(0.5)
    torch.library.opcheck(torch.ops.clusiam.centroid_loss_backward.default, (grad, chat, inv_snorm, csum, counts))
    grad_sums = torch.ops.clusiam.centroid_loss_backward(grad, chat, inv_snorm, csum, counts)
    torch.library.opcheck(
        torch.ops.clusiam.assign_pool_backward.default, (grad_sums, z, y, inv_norm, 1.0, torch.float16)
    )


@fused_cpu
def test_torch_compile_fullgraph_parity():
    z, logits, gumbel = make_inputs(200, 12, 40, seed=6)

    def step(z, logits, gumbel):
        return cf.cluster_loss(z, logits * 1.5, gumbel=gumbel, tau=0.5, impl="fused")

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for M in (200, 150):  # a second shape reuses the dynamic graph
        lc = logits[:M].detach().clone().requires_grad_()
        le = logits[:M].detach().clone().requires_grad_()
        out_c = compiled(z[:M], lc, gumbel[:M])
        out_e = step(z[:M], le, gumbel[:M])
        out_c.backward()
        out_e.backward()
        torch.testing.assert_close(out_c, out_e, atol=1e-6, rtol=1e-5)
        assert_close_grad(lc.grad, le.grad, 1e-5)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda z, l: (z[0], l), "`z` must be 2-D"),
        (lambda z, l: (z, l[None]), "`logits` must be 2-D"),
        (lambda z, l: (z[:5], l), "`z` has 5 rows but `logits` has 8"),
        (lambda z, l: (z[:0], l[:0]), "empty batch"),
        (lambda z, l: (z.long(), l), "`z` has dtype torch.int64"),
        (lambda z, l: (z, l.int()), "`logits` has dtype torch.int32"),
        (lambda z, l: (z.numpy(), l), "`z` must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(make, match):
    z, logits = torch.randn(8, 4), torch.randn(8, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        cf.cluster_loss(*make(z, logits))


def test_bad_options_name_the_argument():
    z, logits = torch.randn(8, 4), torch.randn(8, 3)
    with pytest.raises(ValueError, match="`gumbel` has shape"):
        cf.cluster_loss(z, logits, gumbel=torch.zeros(8, 4))
    for tau in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="`tau` must be a number > 0"):
            cf.cluster_loss(z, logits, tau=tau)
    with pytest.raises(ValueError, match="`impl` must be one of"):
        cf.cluster_loss(z, logits, impl="fast")
    with pytest.raises(ValueError, match="`process_group` must be None, 'default'"):
        cf.cluster_loss(z, logits, process_group="world")
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        cf.cluster_loss(z, logits, process_group="default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU for a second device")
def test_mixed_devices_are_refused():
    with pytest.raises(ValueError, match="must be on one device"):
        cf.cluster_loss(torch.randn(8, 4), torch.randn(8, 3, device="cuda"))


def test_mixed_devices_are_refused_meta():
    with pytest.raises(ValueError, match="must be on one device"):
        cf.cluster_loss(torch.randn(8, 4), torch.randn(8, 3, device="meta"))


@fused_cpu
def test_direct_op_calls_are_checked_in_cpp():
    with pytest.raises(RuntimeError, match="z has 3 rows but logits has 2"):
        torch.ops.clusiam.assign_pool(torch.randn(3, 4), torch.randn(2, 5), None, 1.0, 1e-8)
    with pytest.raises(RuntimeError, match="tau must be > 0"):
        torch.ops.clusiam.assign_pool(torch.randn(3, 4), torch.randn(3, 5), None, 0.0, 1e-8)


def test_auto_falls_back_with_one_warning_and_fused_refuses(monkeypatch):
    """Without kernels for a device, "auto" warns once and uses the reference; "fused" raises."""
    monkeypatch.setattr(functional, "FUSED_DEVICE_TYPES", frozenset())
    monkeypatch.setattr(functional, "_warned_fallback", set())
    z, logits, gumbel = make_inputs(30, 5, 7, seed=2)
    with pytest.warns(UserWarning, match="using the slower reference on cpu"):
        auto = cf.cluster_loss(z, logits, gumbel=gumbel)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cf.cluster_loss(z, logits, gumbel=gumbel)  # no second warning
    torch.testing.assert_close(auto, cf.reference.cluster_loss(z, logits, gumbel=gumbel))
    with pytest.raises(RuntimeError, match="impl='fused'.*impl='reference'"):
        cf.cluster_loss(z, logits, impl="fused")


def test_reference_alone_works_and_matches_published_semantics():
    """The reference path needs no extension: same loss as the op-by-op published formula."""
    z, logits, gumbel = make_inputs(64, 6, 9, seed=12)
    loss, grad, idx = loss_and_grad("reference", z, logits, gumbel)
    zn = torch.nn.functional.normalize(z, dim=1)
    onehot = torch.nn.functional.one_hot(idx, 6).float()
    centers = torch.nn.functional.normalize(onehot.T @ zn, dim=1)
    used = centers.norm(dim=1) > 0
    gram = centers[used] @ centers[used].T
    n = int(used.sum())
    expected = (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-5)
    assert grad.abs().max() > 0


@fused_cpu
def test_near_ties_and_nan_rows_follow_the_reference():
    """The argmax is taken over y like the published code: logits that differ by less than
    float32 can show after the softmax tie, and the first index wins."""
    z = torch.randn(3, 4)
    logits = torch.tensor([[1e-9, 2e-9, -5.0], [0.0, 3.0, 3.0], [float("nan")] * 3])
    zeros = torch.zeros(3, 3)
    _, fused = cf.cluster_loss(z, logits, gumbel=zeros, impl="fused", return_assignments=True)
    _, ref = cf.cluster_loss(z, logits, gumbel=zeros, impl="reference", return_assignments=True)
    assert fused.tolist() == ref.tolist() == [0, 1, 0]


@fused_cpu
def test_internal_outputs_carry_no_gradient_and_backward_ops_check_shapes():
    z, logits, gumbel = make_inputs(20, 4, 6, seed=1)
    y, idx, inv_norm, sums, counts = torch.ops.clusiam.assign_pool(z, logits, gumbel, 1.0, 1e-8)
    assert sums.requires_grad and not (y.requires_grad or inv_norm.requires_grad or counts.requires_grad)
    with pytest.raises(RuntimeError, match=r"grad_sums must be \(K, D\) = \(4, 6\)"):
        torch.ops.clusiam.assign_pool_backward(torch.zeros(5, 6), z, y.detach(), inv_norm, 1.0, torch.float32)
    loss, chat, inv_snorm, csum = torch.ops.clusiam.centroid_loss(sums.detach(), counts, 1e-8)
    with pytest.raises(RuntimeError, match="csum"):
        torch.ops.clusiam.centroid_loss_backward(torch.tensor(1.0), chat, inv_snorm, csum[:-1], counts)
