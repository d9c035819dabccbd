"""A short TopK SAE training run gives the same loss curve on both paths."""

from __future__ import annotations

import contextlib

import pytest
import torch
from kernel_testlib import DEVICE, dev

from saefeat.kernels import SAEAdam, auxk_loss, sparse_decode, topk_encode

B, D_IN, D_SAE, K, STEPS = 32, 24, 80, 4, 12


def _data() -> torch.Tensor:
    """Sparse combinations of hidden directions plus noise: something an SAE can learn."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(40, D_IN, generator=g)
    codes = (torch.rand(B * STEPS, 40, generator=g) < 0.08) * torch.rand(B * STEPS, 40, generator=g)
    return dev(codes @ dirs + 0.01 * torch.randn(B * STEPS, D_IN, generator=g) + 0.5)


def _train(mode: str, bf16: bool, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    monkeypatch.setenv("SAEFEAT_KERNELS", mode)
    data = _data()
    g = torch.Generator().manual_seed(1)
    W_dec = dev(torch.randn(D_SAE, D_IN, generator=g))
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.t().clone().requires_grad_()
    W_dec.requires_grad_()
    b_enc = torch.zeros(D_SAE, device=DEVICE, requires_grad=True)
    b_dec = data.mean(0).clone().requires_grad_()
    opt = SAEAdam([W_enc, b_enc, W_dec, b_dec], lr=1e-2, decoder=W_dec)
    dead = torch.arange(D_SAE, device=DEVICE) >= 3 * D_SAE // 4  # a fixed "dead" set for AuxK
    losses = []
    for step in range(STEPS):
        x = data[step * B : (step + 1) * B]
        bf16_ctx = torch.autocast(DEVICE.type, dtype=torch.bfloat16)
        with bf16_ctx if bf16 else contextlib.nullcontext():
            x_in = x - b_dec
            vals, idx = topk_encode(x_in, W_enc, b_enc, K)
            recon = sparse_decode(idx, vals, W_dec, b_dec)
            e = x - recon.float()
            variance = (x - x.mean(0)).pow(2).sum()
            fvu = e.pow(2).sum() / variance
            aux = auxk_loss(x_in, e, W_enc, b_enc, W_dec, dead, 8, variance=variance)
        opt.zero_grad()
        (fvu + aux / 32).backward()
        opt.step()
        losses.append(float(fvu.detach()))
    return losses


def test_training_loss_curves_agree(triton_backend: str, monkeypatch) -> None:
    ref = torch.tensor(_train("torch", False, monkeypatch))
    fp32 = torch.tensor(_train("triton", False, monkeypatch))
    bf16 = torch.tensor(_train("triton", True, monkeypatch))
    assert torch.isfinite(ref).all() and torch.isfinite(bf16).all()
    assert ref[-1] < 0.8 * ref[0]  # it learns
    torch.testing.assert_close(fp32, ref, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(bf16, ref, rtol=3e-2, atol=3e-3)  # bf16 tolerance
