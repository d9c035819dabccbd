"""auxk_loss against a float64 dense reference (sparsify's masked top-k on pre-acts)."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import assert_close64, dev, f64, grads, pre_acts, problem

from saefeat.kernels import auxk_loss

NAMES = ("x", "W_enc", "b_enc", "W_dec")


def _reference(r: dict, residual: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
    n_dead = int(dead.sum())
    pre = torch.where(dead, pre_acts(r).relu(), -torch.inf)
    vals, idx = pre.topk(min(k_aux, n_dead), dim=1)
    dense = torch.zeros_like(pre.relu()).scatter(1, idx, vals)
    e_hat = dense @ r["W_dec"]
    var = (residual - residual.mean(0)).pow(2).sum()
    return min(n_dead / k_aux, 1.0) * (e_hat - residual).pow(2).sum() / var


@pytest.mark.parametrize("k_aux", [1, 6, 40])  # 40 > number of dead latents
def test_auxk_matches_dense(backend: str, k_aux: int) -> None:
    t = problem(6, 21, 90, seed=k_aux)
    g = torch.Generator().manual_seed(0)
    dead = dev(torch.rand(90, generator=g) < 0.3)
    residual = dev(0.3 * torch.randn(6, 21, generator=g))
    loss = auxk_loss(t["x"], residual, t["W_enc"], t["b_enc"], t["W_dec"], dead, k_aux)
    got = grads(loss, t, NAMES)
    r = f64(t)
    want_loss = _reference(r, residual.double(), dead, k_aux)
    want = grads(want_loss, r, NAMES)
    assert_close64(loss, want_loss.detach())
    for name, a, w in zip(NAMES, got, want, strict=True):
        assert a is not None, name
        assert_close64(a, w)


def test_auxk_nothing_dead_is_zero(backend: str) -> None:
    t = problem(3, 10, 30, seed=1)
    loss = auxk_loss(
        t["x"],
        dev(torch.randn(3, 10)),
        t["W_enc"],
        t["b_enc"],
        t["W_dec"],
        dev(torch.zeros(30, dtype=torch.bool)),
        4,
    )
    assert float(loss) == 0.0


def test_auxk_custom_variance(backend: str) -> None:
    t = problem(4, 12, 40, seed=2)
    dead = dev(torch.arange(40) % 3 == 0)
    res = dev(torch.randn(4, 12))
    a = auxk_loss(t["x"], res, t["W_enc"], t["b_enc"], t["W_dec"], dead, 5)
    b = auxk_loss(t["x"], res, t["W_enc"], t["b_enc"], t["W_dec"], dead, 5, variance=2.0)
    var = (res - res.mean(0)).pow(2).sum()
    torch.testing.assert_close(b, a * var / 2.0)
