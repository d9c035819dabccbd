"""Float64 dense references and comparison helpers for the kernel tests."""

from __future__ import annotations

import os

import torch

# The kernel tests run on the CPU through the Triton interpreter; with
# SAEFEAT_TEST_DEVICE=cuda they run the compiled kernels on a GPU instead. Random inputs
# are drawn on the CPU and moved, so both devices see the same numbers.
DEVICE = torch.device(os.environ.get("SAEFEAT_TEST_DEVICE", "cpu"))


def dev(t: torch.Tensor) -> torch.Tensor:
    return t.to(DEVICE)


def problem(B: int, d_in: int, d_sae: int, seed: int, bias_shift: float = 0.0) -> dict:
    """Random SAE tensors (fp32 leaves requiring grad), decoder rows at unit norm."""
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    t = {
        "x": torch.randn(B, d_in, generator=g),
        "W_enc": W_dec.t().clone() + 0.1 * torch.randn(d_in, d_sae, generator=g),
        "b_enc": 0.1 * torch.randn(d_sae, generator=g) + bias_shift,
        "W_dec": W_dec,
        "b_dec": 0.1 * torch.randn(d_in, generator=g),
        "cot": torch.randn(B, d_in, generator=g),  # cotangent for a scalar loss
    }
    t = {name: dev(v) for name, v in t.items()}
    for name in ("x", "W_enc", "b_enc", "W_dec", "b_dec"):
        t[name].requires_grad_(True)
    return t


def f64(t: dict) -> dict:
    """Detached float64 leaf copies."""
    return {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in t.items()}


def pre_acts(t: dict) -> torch.Tensor:
    return t["x"] @ t["W_enc"] + t["b_enc"]


def dense_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    """relu -> topk -> scatter, differentiable: the dense TopK the kernels must match."""
    acts = pre.relu()
    vals, idx = acts.topk(k, dim=1)
    return torch.zeros_like(acts).scatter(1, idx, vals)


def grads(loss: torch.Tensor, t: dict, names: tuple[str, ...]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [t[n] for n in names], allow_unused=True))


def assert_close64(got: torch.Tensor, want: torch.Tensor, rtol: float = 2e-4) -> None:
    """got (any float dtype) against a float64 reference, scaled to its magnitude; no NaN."""
    assert got.shape == want.shape, (got.shape, want.shape)
    assert torch.isfinite(got).all(), "non-finite values (an unwritten output?)"
    scale = max(float(want.abs().max()), 1.0) if want.numel() else 1.0
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=rtol * scale)


def assert_same_values(vals: torch.Tensor, want: torch.Tensor, rtol: float = 2e-4) -> None:
    """Row-wise multisets equal (order-free, so ties may pick different latents)."""
    assert_close64(vals.sort(dim=1).values, want.sort(dim=1).values, rtol)
