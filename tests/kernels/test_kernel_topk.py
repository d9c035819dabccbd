"""topk_encode (+ sparse_decode in the loss) against float64 dense references."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import (
    DEVICE,
    assert_close64,
    assert_same_values,
    dense_topk,
    dev,
    f64,
    grads,
    pre_acts,
    problem,
)

from saefeat.kernels import sparse_decode, topk_encode

# (B, d_in, d_sae, k): d_in never a power of two, d_sae not a multiple of the block size,
# k = 1, k = d_sae and k large against the number of column blocks.
SIZES = [(5, 24, 97, 1), (19, 50, 300, 9), (4, 33, 70, 70), (6, 19, 130, 100)]
NAMES = ("x", "W_enc", "b_enc", "W_dec", "b_dec")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_topk_forward_matches_float64(backend: str, size: tuple[int, ...]) -> None:
    B, d_in, d_sae, k = size
    t = problem(B, d_in, d_sae, seed=sum(size))
    vals, idx = topk_encode(t["x"], t["W_enc"], t["b_enc"], k)
    pre = pre_acts(f64(t)).relu().detach()
    assert vals.shape == idx.shape == (B, k)
    assert idx.dtype == torch.int64 and vals.dtype == torch.float32
    assert (vals >= 0).all()
    assert_same_values(vals, pre.topk(k, dim=1).values)
    assert ((idx >= 0) & (idx < d_sae)).all()
    assert_close64(vals, pre.gather(1, idx))  # each value sits at its index
    assert all(len(set(row.tolist())) == k for row in idx)  # no latent twice in a row


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_topk_backward_matches_dense_autograd(backend: str, size: tuple[int, ...]) -> None:
    B, d_in, d_sae, k = size
    t = problem(B, d_in, d_sae, seed=sum(size) + 1)
    vals, idx = topk_encode(t["x"], t["W_enc"], t["b_enc"], k)
    out = sparse_decode(idx, vals, t["W_dec"], t["b_dec"])
    got = grads((out * t["cot"]).sum(), t, NAMES)

    r = f64(t)
    out64 = dense_topk(pre_acts(r), k) @ r["W_dec"] + r["b_dec"]
    want = grads((out64 * r["cot"]).sum(), r, NAMES)
    assert_close64(out, out64.detach())
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert g is not None, name
        assert_close64(g, w)


def test_topk_fewer_positive_than_k(backend: str) -> None:
    """Rows with < k positive pre-activations: zeros fill the rest and pass no gradient."""
    t = problem(6, 21, 90, seed=3, bias_shift=-2.5)
    k = 40
    vals, idx = topk_encode(t["x"], t["W_enc"], t["b_enc"], k)
    r = f64(t)
    pre = pre_acts(r)
    assert (pre.relu().gt(0).sum(1) < k).any()
    assert_same_values(vals, pre.relu().topk(k, dim=1).values.detach())
    out = sparse_decode(idx, vals, t["W_dec"], t["b_dec"])
    got = grads((out * t["cot"]).sum(), t, NAMES)
    out64 = dense_topk(pre, k) @ r["W_dec"] + r["b_dec"]
    want = grads((out64 * r["cot"]).sum(), r, NAMES)
    for g, w in zip(got, want, strict=True):
        assert_close64(g, w)


def test_topk_ties_pick_equal_values(backend: str) -> None:
    """x = 0 makes every row relu(b_enc); b_enc with many equal values forces ties."""
    d_sae, k = 75, 12
    b = dev(torch.randint(0, 4, (d_sae,), generator=torch.Generator().manual_seed(0)).float())
    x = dev(torch.zeros(3, 10))
    W = dev(torch.randn(10, d_sae))
    vals, idx = topk_encode(x, W, b, k)
    want = b.relu().topk(k).values.expand(3, k)
    assert_same_values(vals, want)
    torch.testing.assert_close(vals, b[idx])
    assert all(len(set(row.tolist())) == k for row in idx)


def test_topk_bf16_autocast_matches_reference(triton_backend: str, monkeypatch) -> None:
    """Under bf16 autocast both paths compute in bf16; they agree to bf16 precision."""
    t = problem(6, 40, 150, seed=11)
    k = 8
    results = {}
    for mode in ("torch", "triton"):
        monkeypatch.setenv("SAEFEAT_KERNELS", mode)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            vals, idx = topk_encode(t["x"], t["W_enc"], t["b_enc"], k)
            out = sparse_decode(idx, vals, t["W_dec"], t["b_dec"])
        assert vals.dtype == torch.float32
        g = grads((out.float() * t["cot"]).sum(), t, NAMES)
        results[mode] = (vals.detach(), out.detach(), g)
    pre = pre_acts(f64(t)).relu().detach()
    assert_same_values(results["triton"][0], pre.topk(k, dim=1).values, rtol=2e-2)
    (v_r, o_r, g_r), (v_t, o_t, g_t) = results["torch"], results["triton"]
    assert_same_values(v_t, v_r.double(), rtol=1e-2)
    assert_close64(o_t, o_r.double(), rtol=2e-2)
    for a, b in zip(g_t, g_r, strict=True):
        assert_close64(a, b.double(), rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_select_prunes_blocks_exactly(triton_backend: str, dtype: torch.dtype) -> None:
    """The selection kernel alone, with many column blocks and k well below their count."""
    from saefeat.kernels import gemm, topk

    g = torch.Generator().manual_seed(5)
    B, N = 5, 1000
    pre = dev(torch.rand(B, N, generator=g).pow(4).to(dtype))  # skewed, with bf16 duplicates
    pre[1] = 0.0  # an all-zero row
    nb = -(-N // gemm.SEL_BLOCK)
    padded = torch.zeros(B, nb * gemm.SEL_BLOCK, dtype=torch.float32, device=DEVICE)
    padded[:, :N] = pre.float()
    bmax = padded.view(B, nb, gemm.SEL_BLOCK).amax(2)
    for k in (1, 7, 64):
        vals, idx = topk.select_topk(pre, bmax, k, torch.float32)
        want = pre.float().topk(k, dim=1).values
        assert_same_values(vals, want.double(), rtol=0)
        torch.testing.assert_close(vals, pre.float().gather(1, idx), rtol=0, atol=0)
        assert all(len(set(row.tolist())) == k for row in idx)
