"""sparse_decode against a float64 dense decode, including duplicate and padded indices."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, assert_close64, dev

from saefeat.kernels import sparse_decode


def _inputs(B: int, k: int, d_sae: int, d_in: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, d_sae, (B, k), generator=g)  # duplicates within a row allowed
    vals = torch.randn(B, k, generator=g).relu()  # zeros like relu'd / padded slots
    W_dec = torch.randn(d_sae, d_in, generator=g)
    b_dec = torch.randn(d_in, generator=g)
    cot = torch.randn(B, d_in, generator=g)
    idx, vals, W_dec, b_dec, cot = (dev(t) for t in (idx, vals, W_dec, b_dec, cot))
    return idx, vals.requires_grad_(), W_dec.requires_grad_(), b_dec.requires_grad_(), cot


def _dense64(idx, vals, W_dec, b_dec):
    dense = torch.zeros(idx.shape[0], W_dec.shape[0], dtype=torch.float64, device=DEVICE)
    dense = dense.index_put(
        (torch.arange(idx.shape[0], device=DEVICE)[:, None].expand_as(idx), idx),
        vals,
        accumulate=True,
    )
    return dense @ W_dec + b_dec


@pytest.mark.parametrize(
    "size", [(6, 1, 50, 17), (5, 40, 33, 70), (9, 7, 130, 45)], ids=lambda s: "x".join(map(str, s))
)
def test_sparse_decode_matches_dense(backend: str, size: tuple[int, ...]) -> None:
    B, k, d_sae, d_in = size
    idx, vals, W_dec, b_dec, cot = _inputs(B, k, d_sae, d_in, seed=sum(size))
    out = sparse_decode(idx, vals, W_dec, b_dec)
    got = torch.autograd.grad((out * cot).sum(), [vals, W_dec, b_dec])

    v64, w64, b64 = (t.detach().double().requires_grad_() for t in (vals, W_dec, b_dec))
    out64 = _dense64(idx, v64, w64, b64)
    want = torch.autograd.grad((out64 * cot.double()).sum(), [v64, w64, b64])
    assert out.dtype == torch.float32
    assert_close64(out, out64.detach())
    for g, w in zip(got, want, strict=True):
        assert_close64(g, w)


def test_sparse_decode_bf16_weights(backend: str) -> None:
    """bf16 decoder weights are read as they are and accumulated in fp32."""
    idx, vals, W_dec, b_dec, cot = _inputs(4, 9, 60, 37, seed=2)
    w16 = W_dec.detach().bfloat16().requires_grad_()
    out = sparse_decode(idx, vals, w16, b_dec)
    assert out.dtype == torch.float32
    out64 = _dense64(idx, vals.detach().double(), w16.detach().double(), b_dec.detach().double())
    assert_close64(out, out64, rtol=1e-5)
    (g_w,) = torch.autograd.grad((out * cot).sum(), [w16])
    assert g_w.dtype == torch.bfloat16 and torch.isfinite(g_w.float()).all()


def test_sparse_decode_int32_indices(backend: str) -> None:
    idx, vals, W_dec, b_dec, cot = _inputs(5, 6, 40, 19, seed=8)
    out = sparse_decode(idx.int(), vals, W_dec, b_dec)
    got = torch.autograd.grad((out * cot).sum(), [vals, W_dec])
    want = torch.autograd.grad((sparse_decode(idx, vals, W_dec, b_dec) * cot).sum(), [vals, W_dec])
    assert_close64(
        out, _dense64(idx, vals.detach().double(), W_dec.detach().double(), b_dec.detach().double())
    )
    for g, w in zip(got, want, strict=True):
        assert_close64(g, w.double())


def test_sparse_decode_without_bias(backend: str) -> None:
    idx, vals, W_dec, _, cot = _inputs(3, 5, 20, 11, seed=4)
    out = sparse_decode(idx, vals, W_dec, None)
    assert_close64(out, _dense64(idx, vals.detach().double(), W_dec.detach().double(), 0.0))


def test_sparse_decode_rejects_bad_shapes(backend: str) -> None:
    idx, vals, W_dec, b_dec, _ = _inputs(3, 5, 20, 11, seed=4)
    with pytest.raises(ValueError, match="idx and vals"):
        sparse_decode(idx[:, :2], vals, W_dec, b_dec)
    with pytest.raises(ValueError, match="b_dec"):
        sparse_decode(idx, vals, W_dec, b_dec[:3])
