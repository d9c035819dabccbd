"""SAEAdam against float64 references: torch.optim.Adam, and the decoder's three-step recipe."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, assert_close64, dev

from saefeat.kernels import SAEAdam

LR, BETAS, EPS = 3e-2, (0.9, 0.99), 1e-8


def _grads(seed: int, steps: int, shapes: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[dev(torch.randn(s, generator=g)) for s in shapes] for _ in range(steps)]


def _decoder_reference64(w: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Project out the row-parallel gradient, Adam, renormalise rows (sparsify's order)."""
    w = w.double().clone()
    m = torch.zeros_like(w)
    v = torch.zeros_like(w)
    for step, g in enumerate(grads, start=1):
        g = g.double()
        g = g - ((g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)) * w
        m = BETAS[0] * m + (1 - BETAS[0]) * g
        v = BETAS[1] * v + (1 - BETAS[1]) * g * g
        denom = (v / (1 - BETAS[1] ** step)).sqrt() + EPS
        w = w - LR / (1 - BETAS[0] ** step) * m / denom
        w = w / w.norm(dim=1, keepdim=True)
    return w


@pytest.mark.parametrize("register_row", [True, False], ids=["registers", "chunked"])
def test_sae_adam_matches_references(backend: str, register_row: bool, monkeypatch) -> None:
    if not register_row:
        if backend != "triton":
            pytest.skip("the chunked row loop exists only in the kernel")
        from saefeat.kernels import adam

        monkeypatch.setattr(adam, "MAX_REGISTER_ROW", 16)
    shapes = [(37, 29), (29, 37), (29,), (37,)]  # W_enc, W_dec, b_enc, b_dec
    gen = torch.Generator().manual_seed(0)
    init = [dev(torch.randn(s, generator=gen)) for s in shapes]
    init[1] /= init[1].norm(dim=1, keepdim=True)
    # W_enc stored transposed (column-major), as an SAE may keep it.
    params = [init[0].t().contiguous().t().requires_grad_()]
    params += [p.clone().requires_grad_() for p in init[1:]]
    steps = _grads(1, 3, shapes)
    opt = SAEAdam(params, lr=LR, betas=BETAS, eps=EPS, decoder=params[1])
    for gs in steps:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, gs, strict=True):
            torch.testing.assert_close(p.grad, g, rtol=0, atol=0)  # gradients untouched

    plain = [init[i].double().clone().requires_grad_() for i in (0, 2, 3)]
    ref = torch.optim.Adam(plain, lr=LR, betas=BETAS, eps=EPS)
    for gs in steps:
        for p, g in zip(plain, [gs[0], gs[2], gs[3]], strict=True):
            p.grad = g.double()
        ref.step()
    for got, want in zip([params[0], params[2], params[3]], plain, strict=True):
        assert_close64(got.detach(), want.detach(), rtol=1e-5)
    w64 = _decoder_reference64(init[1], [gs[1] for gs in steps])
    assert_close64(params[1].detach(), w64, rtol=1e-5)
    torch.testing.assert_close(params[1].detach().norm(dim=1), torch.ones(29, device=DEVICE))


def test_sae_adam_decoder_must_be_a_param() -> None:
    p = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="decoder"):
        SAEAdam([p], decoder=torch.zeros(3, 4))


def test_sae_adam_state_dict_round_trip(backend: str) -> None:
    w = dev(torch.randn(5, 7)).requires_grad_()
    opt = SAEAdam([w], lr=1e-2, decoder=w)
    w.grad = dev(torch.randn(5, 7))
    opt.step()
    state = opt.state_dict()
    opt2 = SAEAdam([w], lr=1e-2, decoder=w)
    opt2.load_state_dict(state)
    assert float(opt2.state[w]["step"]) == 1.0
    opt2.step()
