"""Inputs and comparison helpers shared by the cluster-loss tests."""

from __future__ import annotations

import torch

import clusiam_fast as cf

# Tolerances per dtype of the inputs: (loss atol, gradient tolerance relative to max |grad|).
TOLERANCES = {
    torch.float32: (2e-5, 2e-4),
    torch.bfloat16: (2e-5, 2e-2),  # inputs are upcast exactly; only the bf16 gradient output rounds
    torch.float16: (2e-5, 4e-3),
}


def make_inputs(M, K, D, *, kind="normal", dtype=torch.float32, device="cpu", seed=0):
    """z (M, D), logits (M, K) requiring grad and gumbel noise (M, K) of a given flavour."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(M, D, generator=gen)
    logits = torch.randn(M, K, generator=gen)
    gumbel = -torch.empty(M, K).exponential_(generator=gen).log()
    if kind == "peaked":
        logits = logits * 20
    elif kind == "flat":  # exact ties everywhere: the first index must win
        logits = torch.zeros(M, K)
        gumbel = torch.zeros(M, K)
    elif kind == "one_active":  # every row picks cluster K // 2
        logits[:, K // 2] += 1e3
    elif kind == "dominant":  # ~99% of the rows pick cluster K // 3, the others spread
        logits[torch.arange(M) % 97 != 0, K // 3] += 1e3
    elif kind == "few_rows":  # repeated rows, little noise: many empty clusters
        rows = max(1, M // 4)
        logits = logits[:rows].repeat(-(-M // rows), 1)[:M] * 5
        gumbel = gumbel * 0.1
    z, logits, gumbel = (t.to(device=device, dtype=dtype) for t in (z, logits, gumbel))
    return z, logits.requires_grad_(), gumbel


def loss_and_grad(impl, z, logits, gumbel, *, tau=1.0, upstream=1.0, **kw):
    """Loss, logits gradient and assignments of one implementation, inputs left untouched."""
    logits = logits.detach().clone().requires_grad_()
    if impl == "reference-float32":  # the published computation on the float32 values of the inputs
        loss, idx = cf.reference.cluster_loss(
            z.float(),
            logits.float(),
            tau=tau,
            gumbel=None if gumbel is None else gumbel.float(),
            return_assignments=True,
            **kw,
        )
    else:
        loss, idx = cf.cluster_loss(z, logits, tau=tau, gumbel=gumbel, impl=impl, return_assignments=True, **kw)
    (loss * upstream).backward()
    return loss.detach(), logits.grad, idx


def assert_close_grad(actual, expected, rel):
    scale = expected.abs().max().item()
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= rel * scale + 1e-7, f"max gradient error {err:.3g} > {rel:g} x max |grad| {scale:.3g}"
