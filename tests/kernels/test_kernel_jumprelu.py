"""jumprelu_encode against float64 autograd with dictionary_learning's STE functions."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, assert_close64, dev, f64, grads, pre_acts, problem

from saefeat.kernels import jumprelu_encode


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU64(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bw):
        ctx.save_for_backward(pre, threshold)
        ctx.bw = bw
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, g):
        pre, t = ctx.saved_tensors
        g_t = (-(t / ctx.bw) * _rect((pre - t) / ctx.bw) * g).sum(0)
        return (pre > t) * g, g_t, None


class _Step64(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bw):
        ctx.save_for_backward(pre, threshold)
        ctx.bw = bw
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, t = ctx.saved_tensors
        return torch.zeros_like(pre), (-(1.0 / ctx.bw) * _rect((pre - t) / ctx.bw) * g).sum(0), None


NAMES = ("x", "W_enc", "b_enc", "threshold")


@pytest.mark.parametrize("size", [(5, 19, 70), (8, 33, 41)], ids=lambda s: "x".join(map(str, s)))
def test_jumprelu_matches_float64_ste(backend: str, size: tuple[int, ...]) -> None:
    B, d_in, d_sae = size
    bw = 0.7
    t = problem(B, d_in, d_sae, seed=sum(size))
    g = torch.Generator().manual_seed(1)
    t["threshold"] = dev(torch.rand(d_sae, generator=g)).requires_grad_()
    cot = dev(torch.randn(B, d_sae, generator=g))
    cot_l0 = dev(torch.randn(B, generator=g))

    acts, l0 = jumprelu_encode(t["x"], t["W_enc"], t["b_enc"], t["threshold"], bw, return_l0=True)
    got = grads((acts * cot).sum() + (l0 * cot_l0).sum(), t, NAMES)

    r = f64(t)
    pre = pre_acts(r)
    acts64 = _JumpReLU64.apply(pre, r["threshold"], bw)
    l064 = _Step64.apply(pre, r["threshold"], bw).sum(1)
    want = grads((acts64 * cot.double()).sum() + (l064 * cot_l0.double()).sum(), r, NAMES)

    assert acts.shape == (B, d_sae)
    assert_close64(acts, acts64.detach())
    assert_close64(l0, l064.detach())
    assert (_rect((pre - r["threshold"]) / bw) > 0).sum() > B  # the STE band is populated
    for name, a, w in zip(NAMES, got, want, strict=True):
        assert a is not None, name
        assert_close64(a, w)


def test_jumprelu_acts_only(backend: str) -> None:
    t = problem(4, 23, 50, seed=7)
    th = torch.full((50,), 0.3, device=DEVICE, requires_grad=True)
    acts = jumprelu_encode(t["x"], t["W_enc"], t["b_enc"], th, 0.1)
    assert isinstance(acts, torch.Tensor)
    g_th, g_w = torch.autograd.grad(acts.square().sum(), [th, t["W_enc"]])
    assert torch.isfinite(g_th).all() and torch.isfinite(g_w).all()
