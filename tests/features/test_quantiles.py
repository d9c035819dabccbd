"""Quantile samples against brute force: each (feature, decile) holds min(per_bin, firings
in that decile) distinct firings of that decile, with correct windows."""

from __future__ import annotations

import pickle

import torch
from test_accumulate import dense, random_sparse

from saefeat.features.accumulate import FeatureAccumulator


def _check(acc: FeatureAccumulator, raw: torch.Tensor, ctx_len: int, exact_counts: bool):
    acts = raw.clone()
    acts[torch.arange(acts.shape[0]) % ctx_len == 0] = 0  # position 0 is skipped
    q = acc.quantiles
    n_bins, per_bin, w = q.n_bins, q.per_bin, acc.window
    f, v, ctx, pos, win = q.samples()
    assert f.numel() > 0
    top = acts.max(0).values
    for feature in range(acts.shape[1]):
        col = acts[:, feature]
        mine = (f == feature).nonzero().squeeze(1)
        # each feature's samples come strongest first
        assert torch.all(v[mine][:-1] >= v[mine][1:])
        rows = (ctx[mine] * ctx_len + pos[mine]).tolist()
        assert len(set(rows)) == len(rows), "a firing was sampled twice"
        bins = torch.clamp((col / max(float(top[feature]), 1e-30) * n_bins).floor(), 0, n_bins - 1)
        for b in range(n_bins):
            population = ((col > 0) & (bins == b)).nonzero().squeeze(1).tolist()
            held = [r for r in rows if bins[r] == b]
            assert set(held) <= set(population), (feature, b)
            if exact_counts:
                assert len(held) == min(per_bin, len(population)), (feature, b)
            else:
                assert len(held) <= per_bin
        for j, m in enumerate(mine.tolist()):
            row = rows[j]
            assert col[row] == v[m]
            for k, off in enumerate(range(-w, w + 1)):
                rr = row + off
                same = 0 <= rr < len(col) and rr // ctx_len == row // ctx_len
                assert win[m, k] == (acts[rr, feature] if same else 0)  # 0 on position 0


def _blocks(n_blocks, rows, d_sae, k, seed0, boost=()):
    out = []
    for b in range(n_blocks):
        vals, idx = random_sparse(rows, d_sae, k, seed=seed0 + b)
        if b in boost:
            vals = vals * 10  # the features' max lands in this block
        out.append((vals, idx))
    return out


def test_one_block_is_exact():
    d_sae, k, ctx_len = 11, 5, 8
    acc = FeatureAccumulator(d_sae, 3, 2, n_quantile_bins=10, per_quantile_bin=2, seed=1)
    ((vals, idx),) = _blocks(1, 40 * ctx_len, d_sae, k, 0)
    acc.add(vals, idx, first_context=0, ctx_len=ctx_len)
    _check(acc, dense(vals, idx, d_sae), ctx_len, exact_counts=True)


def test_many_blocks_and_merge_once_the_max_is_known():
    d_sae, k, ctx_len = 9, 4, 6
    # Exact when each worker meets the max in its first block (bins never move); b's is
    # block 2. A worker that never sees the max bins against its own, which is the
    # approximation the module docstring describes.
    blocks = _blocks(4, 20 * ctx_len, d_sae, k, 10, boost=(0, 2))
    a = FeatureAccumulator(d_sae, 3, 1, n_quantile_bins=10, per_quantile_bin=3, seed=2)
    b = FeatureAccumulator(d_sae, 3, 1, n_quantile_bins=10, per_quantile_bin=3, seed=3)
    for i, (vals, idx) in enumerate(blocks):
        (a if i < 2 else b).add(vals, idx, first_context=20 * i, ctx_len=ctx_len)
    a.merge(pickle.loads(pickle.dumps(b)))  # as Ray ships it
    raw = torch.cat([dense(v, i, d_sae) for v, i in blocks])
    _check(a, raw, ctx_len, exact_counts=True)


def test_rising_max_keeps_samples_in_their_final_bins():
    d_sae, k, ctx_len = 7, 3, 5
    blocks = _blocks(5, 10 * ctx_len, d_sae, k, 20)
    blocks = [(v * (1 + i), idx) for i, (v, idx) in enumerate(blocks)]  # max keeps rising
    acc = FeatureAccumulator(d_sae, 2, 1, n_quantile_bins=10, per_quantile_bin=2, seed=4)
    for i, (vals, idx) in enumerate(blocks):
        acc.add(vals, idx, first_context=10 * i, ctx_len=ctx_len)
    raw = torch.cat([dense(v, i, d_sae) for v, i in blocks])
    _check(acc, raw, ctx_len, exact_counts=False)


def test_sample_is_uniform_within_a_bin():
    # One feature, one bin's worth of 4 equal-bin firings, 1 slot: each is picked ~1/4.
    ctx_len, picks = 5, torch.zeros(4)
    vals = torch.tensor([[0.0], [0.91], [0.92], [0.93], [0.94]])
    idx = torch.zeros(5, 1, dtype=torch.long)
    for seed in range(400):
        acc = FeatureAccumulator(1, 1, 0, n_quantile_bins=10, per_quantile_bin=1, seed=seed)
        acc.add(vals, idx, first_context=0, ctx_len=ctx_len)
        _, _, _, pos, _ = acc.quantiles.samples()
        picks[int(pos[0]) - 1] += 1
    assert picks.min() > 60 and picks.max() < 140, picks


def test_decoder_neighbours_match_brute_force():
    from saefeat.features.neighbours import decoder_neighbours

    W = torch.randn(37, 6, generator=torch.Generator().manual_seed(0))
    W[5] = 0  # a dead row
    near, cos = decoder_neighbours(W, n=4, block=8)
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    full = unit @ unit.T
    full.fill_diagonal_(-float("inf"))
    want = full.topk(4, dim=1)
    torch.testing.assert_close(cos, want.values)
    assert (near != torch.arange(37)[:, None]).all()
    torch.testing.assert_close(full.gather(1, near), want.values)
    small, _ = decoder_neighbours(W[:3], n=4)
    assert (small[:, 2:] == -1).all() and (small[:, :2] >= 0).all()
