"""batch_topk_encode: layout and gradients against a float64 flatten-topk reference."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import assert_close64, f64, grads, pre_acts, problem

from saefeat.kernels import batch_topk_encode, sparse_decode

NAMES = ("x", "W_enc", "b_enc", "W_dec", "b_dec")


def _dense_batch_topk(pre: torch.Tensor, k: int) -> torch.Tensor:
    acts = pre.relu()
    flat = acts.reshape(-1)
    vals, idx = flat.topk(acts.shape[0] * k)
    return torch.zeros_like(flat).scatter(0, idx, vals).view_as(acts)


@pytest.mark.parametrize(
    "size", [(6, 30, 97, 1), (5, 21, 70, 9), (4, 17, 40, 33)], ids=lambda s: "x".join(map(str, s))
)
def test_batch_topk_layout_and_grads(backend: str, size: tuple[int, ...]) -> None:
    B, d_in, d_sae, k = size
    # Skewed rows so per-row counts differ a lot (and exceed the first 2k candidates).
    t = problem(B, d_in, d_sae, seed=sum(size))
    with torch.no_grad():
        t["x"][0] *= 4.0
    vals, idx = batch_topk_encode(t["x"], t["W_enc"], t["b_enc"], k)
    r = f64(t)
    dense = _dense_batch_topk(pre_acts(r), k)

    counts = (dense > 0).sum(1)
    assert vals.shape == idx.shape == (B, max(1, int(counts.max())))
    assert idx.dtype == torch.int64 and ((idx >= 0) & (idx < d_sae)).all()
    for b in range(B):
        n = int(counts[b])
        assert (vals[b, n:] == 0).all()  # padding
        assert (vals[b, :n] > 0).all()
        assert (vals[b, :n].diff() <= 0).all()  # descending
        assert_close64(vals[b, :n], dense[b, idx[b, :n]].detach())
        assert set(idx[b, :n].tolist()) == set(dense[b].nonzero().squeeze(1).tolist())

    out = sparse_decode(idx, vals, t["W_dec"], t["b_dec"])
    got = grads((out * t["cot"]).sum(), t, NAMES)
    out64 = dense @ r["W_dec"] + r["b_dec"]
    want = grads((out64 * r["cot"]).sum(), r, NAMES)
    assert_close64(out, out64.detach())
    for g, w in zip(got, want, strict=True):
        assert_close64(g, w)


def test_batch_topk_total_count(backend: str) -> None:
    t = problem(8, 20, 64, seed=9)
    k = 5
    vals, _ = batch_topk_encode(t["x"], t["W_enc"], t["b_enc"], k)
    positives = int((pre_acts(f64(t)) > 0).sum())
    assert int((vals > 0).sum()) == min(8 * k, positives)
