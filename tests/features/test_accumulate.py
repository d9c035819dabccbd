import torch

from saefeat.features.accumulate import HIST_EDGES, FeatureAccumulator


def random_sparse(n_rows, d_sae, k, seed):
    g = torch.Generator().manual_seed(seed)
    pre = torch.rand(n_rows, d_sae, generator=g) ** 3
    vals, idx = pre.topk(k, dim=1)
    vals[torch.rand(n_rows, k, generator=g) < 0.2] = 0  # some inactive slots
    return vals, idx


def dense(vals, idx, d_sae):
    return torch.zeros(vals.shape[0], d_sae).scatter_(1, idx, vals)


def check_against_brute_force(acc, acts, ctx_len, n_top, window):
    acts = acts.clone()
    acts[torch.arange(acts.shape[0]) % ctx_len == 0] = 0  # position 0 is skipped
    fires = (acts > 0).sum(0)
    assert torch.equal(acc.fires, fires)
    torch.testing.assert_close(acc.act_max, acts.max(0).values)
    torch.testing.assert_close(acc.act_sum.float(), acts.sum(0), rtol=1e-5, atol=1e-5)
    assert acc.hist.sum() == fires.sum()
    for f in range(acts.shape[1]):
        col = acts[:, f]
        # Top examples are peaks (features/distinct.py): stronger than everything within
        # `window` tokens to the left in the context, at least as strong to the right.
        peak = torch.zeros_like(col)
        for row in range(len(col)):
            near = [rr for rr in range(row - window, row + window + 1)
                    if 0 <= rr < len(col) and rr // ctx_len == row // ctx_len]  # fmt: skip
            if col[row] > 0 and all(col[rr] < col[row] if rr < row else col[rr] <= col[row]
                                    for rr in near if rr != row):  # fmt: skip
                peak[row] = col[row]
        n = min(n_top, int((peak > 0).sum()))
        want = peak.topk(n).values
        got = acc.top_vals[f, :n]
        torch.testing.assert_close(got, want)
        assert (acc.top_vals[f, n:] == -float("inf")).all()
        for r in range(n):
            row = int(acc.top_ctx[f, r]) * ctx_len + int(acc.top_pos[f, r])
            assert col[row] == acc.top_vals[f, r]
            for j, off in enumerate(range(-window, window + 1)):
                rr = row + off
                same = 0 <= rr < len(col) and rr // ctx_len == row // ctx_len
                # windows show 0 on excluded tokens (position 0), like everything else
                assert acc.top_window[f, r, j] == (acts[rr, f] if same else 0)


def test_matches_brute_force_over_several_batches():
    d_sae, k, ctx_len, n_top, window = 37, 4, 8, 3, 2
    acc = FeatureAccumulator(d_sae, n_top, window)
    parts = []
    for b in range(3):
        vals, idx = random_sparse(5 * ctx_len, d_sae, k, seed=b)
        acc.add(vals, idx, first_context=5 * b, ctx_len=ctx_len)
        parts.append(dense(vals, idx, d_sae))
    check_against_brute_force(acc, torch.cat(parts), ctx_len, n_top, window)
    assert acc.n_tokens == 15 * (ctx_len - 1)


def test_merge_equals_one_pass():
    d_sae, k, ctx_len = 23, 3, 6
    whole = FeatureAccumulator(d_sae, 4, 1)
    a, b = FeatureAccumulator(d_sae, 4, 1), FeatureAccumulator(d_sae, 4, 1)
    for i, part in enumerate([a, b, a]):
        vals, idx = random_sparse(4 * ctx_len, d_sae, k, seed=10 + i)
        whole.add(vals, idx, first_context=4 * i, ctx_len=ctx_len)
        part.add(vals, idx, first_context=4 * i, ctx_len=ctx_len)
    a.merge(b)
    for name in ("fires", "act_max", "hist", "top_vals", "top_ctx", "top_pos", "top_window"):
        assert torch.equal(getattr(a, name), getattr(whole, name)), name
    assert len(HIST_EDGES) == 57
