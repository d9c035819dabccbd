"""Issue 21, item 4: artifact features are named, each window shows once, quantile
samples do not repeat the top examples, fired tokens, the logit histogram."""

import numpy as np
import pytest
import torch

from saefeat.features.accumulate import FeatureAccumulator
from saefeat.features.artifacts import ARTIFACT_SHARE, flag_artifacts, special_token_ids
from saefeat.features.distinct import best_per_key, distinct_examples, is_peak, window_keys
from saefeat.features.fired import fired_tokens
from saefeat.features.logit_histogram import logit_histograms
from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.example_search import repeated_windows

BOS, SEP = 1, 2
STRINGS = ["<pad>", "<|im_start|>", "<sep>"] + [f"t{i}" for i in range(3, 100)]


def example(f, rank, act, pos, ctx=None, ids=(5, 6, 7), focus=1, kind="top"):
    return FeatureExample(f, rank, act, rank if ctx is None else ctx, pos, list(ids),
                          [STRINGS[i] for i in ids], [0.0] * len(ids), focus, kind)  # fmt: skip


def flags(examples, previous, d_sae=4):
    return flag_artifacts(d_sae, examples, previous, [BOS, SEP], STRINGS)


def test_a_feature_after_bos_is_flagged_and_names_the_token():
    # Feature 0 fires on the token after <|im_start|> anywhere in its contexts.
    ex = [example(0, r, 5.0 - r * 0.1, pos=10 + r) for r in range(6)]
    assert flags(ex, [BOS] * 6)[0] == "after special token '<|im_start|>'"


def test_fixed_early_positions_and_one_position_are_flagged():
    early = [example(1, r, 3.0, pos=1 + r % 2) for r in range(5)]
    one = [example(2, r, 3.0, pos=17) for r in range(5)]
    out = flags(early + one, [40] * 10)
    assert out[1] == "position <= 2" and out[2] == "position 17"


def test_a_feature_spread_over_positions_is_not_flagged():
    ex = [example(3, r, 2.0, pos=5 + 7 * r) for r in range(8)]
    assert flags(ex, [40] * 8) == [None, None, None, None]


def test_the_rule_weighs_by_activation_and_needs_enough_examples():
    # 3 of 5 examples after BOS, but they carry 90% of the mass: flagged.
    ex = [example(0, r, 9.0, pos=20 + r) for r in range(3)]
    ex += [example(0, 3 + r, 1.5, pos=40 + r) for r in range(2)]
    assert flags(ex, [BOS, BOS, BOS, 40, 40])[0] is not None
    # Under the share: not flagged.
    light = [example(0, r, 1.0, pos=20 + r) for r in range(5)]
    assert flags(light, [BOS, BOS, BOS, 40, 40])[0] is None and 3 / 5 < ARTIFACT_SHARE
    # Three examples prove nothing.
    assert flags(ex[:3], [BOS] * 3)[0] is None


def test_special_ids_include_bos_and_eos():
    class Tok:
        all_special_ids = [5]
        bos_token_id, eos_token_id, pad_token_id = 1, 2, None

    assert special_token_ids(Tok()) == [1, 2, 5]


def test_window_keys_tell_windows_by_their_tokens():
    tokens = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 6, 7, 8], [1, 5, 6, 7, 8]])
    keys = window_keys(tokens, 1).view(3, 5)
    assert keys[0, 3] == keys[1, 3]  # (6, 7, 8) in both, at different contexts
    assert keys[0, 2] != keys[1, 2]  # (5, 6, 7) vs (9, 6, 7)
    assert torch.equal(keys[0], keys[2])  # the same context: the same keys
    assert keys[0, 1] != keys[1, 1]  # (1, 5, 6) vs (1, 9, 6)
    assert keys[0, 0] != keys[0, 4]  # edges: outside-the-context counts as a token


def test_best_per_key_keeps_the_strongest_of_each():
    g = torch.tensor([0, 0, 0, 1, 1])
    k = torch.tensor([7, 7, 8, 7, 7])
    v = torch.tensor([1.0, 3.0, 2.0, 0.5, 0.6])
    kept = sorted(best_per_key(g, k, v).tolist())
    assert kept == [1, 2, 4]


def test_repeated_windows_enter_the_top_list_once():
    """A feature that fires on the same text in four contexts shows it once, and the
    next distinct windows fill the list (fails without the accumulator's dedupe)."""
    d_sae, ctx_len, n_top, w = 2, 6, 3, 1
    # Contexts 0-3 are the same text, context 4 and 5 differ.
    tokens = torch.tensor([[1, 10, 11, 12, 13, 14]] * 4 + [[1, 20, 21, 22, 23, 24],
                                                          [1, 30, 31, 32, 33, 34]])  # fmt: skip
    keys = window_keys(tokens, w)
    n_rows = tokens.numel()
    vals = torch.zeros(n_rows, 1)
    idx = torch.zeros(n_rows, 1, dtype=torch.long)
    for c in range(6):  # feature 0 fires at position 3 of every context
        vals[c * ctx_len + 3, 0] = 5.0 if c < 4 else 4.0 - 0.5 * (c - 4)
    acc = FeatureAccumulator(d_sae, n_top, w)
    # Two blocks, so the repeats meet both within a block and against the held table.
    half = 3 * ctx_len
    acc.add(vals[:half], idx[:half], first_context=0, ctx_len=ctx_len, window_keys=keys[:half])
    acc.add(vals[half:], idx[half:], first_context=3, ctx_len=ctx_len, window_keys=keys[half:])
    got = acc.top_vals[0].tolist()
    assert got == [5.0, 4.0, 3.5]
    assert int(acc.top_ctx[0, 0]) in range(4) and acc.top_ctx[0, 1:].tolist() == [4, 5]
    # Merging an accumulator that saw the same text keeps it once too.
    other = FeatureAccumulator(d_sae, n_top, w)
    other.add(vals[:ctx_len], idx[:ctx_len], first_context=0, ctx_len=ctx_len,
              window_keys=keys[:ctx_len])  # fmt: skip
    acc.merge(other)
    assert acc.top_vals[0].tolist() == [5.0, 4.0, 3.5]


def test_a_run_of_firings_shows_once_at_its_peak():
    """Firings one token apart in one context are one window: only the strongest enters
    the top list, and the next context's peak follows it (fails without is_peak)."""
    ctx_len, w = 8, 2
    vals = torch.zeros(2 * ctx_len, 1)
    vals[2:6, 0] = torch.tensor([1.0, 3.0, 2.0, 2.9])  # a run at positions 2..5
    vals[ctx_len + 4, 0] = 2.5
    idx = torch.zeros(2 * ctx_len, 1, dtype=torch.long)
    acc = FeatureAccumulator(1, 3, w)
    acc.add(vals, idx, first_context=0, ctx_len=ctx_len)
    assert acc.top_vals[0].tolist() == [3.0, 2.5, -float("inf")]
    assert acc.top_pos[0, :2].tolist() == [3, 4]
    # Equal neighbours: the leftmost is the peak, once.
    assert is_peak(torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([1.0]), 1).item()
    assert not is_peak(torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([1.0]), 1).item()


def test_without_keys_the_accumulator_is_unchanged():
    d_sae, ctx_len = 3, 4
    vals = torch.tensor([[0.0], [2.0], [0.0], [3.0]] * 2)
    idx = torch.zeros(8, 1, dtype=torch.long)
    acc = FeatureAccumulator(d_sae, 4, 1)
    acc.add(vals, idx, first_context=0, ctx_len=ctx_len)
    assert acc.top_vals[0].tolist() == [3.0, 3.0, 2.0, 2.0]


def test_distinct_examples_drop_repeats_and_top_windows_from_quantiles():
    top = [example(0, 0, 5.0, pos=3, ctx=0), example(0, 1, 4.9, pos=3, ctx=1),
           example(0, 2, 4.0, pos=3, ctx=2, ids=(8, 9, 10))]  # fmt: skip
    quantile = [example(0, 0, 4.0, pos=3, ctx=2, ids=(8, 9, 10), kind="quantile"),
                example(0, 1, 2.0, pos=5, ctx=7, ids=(11, 12, 13), kind="quantile"),
                example(0, 2, 2.0, pos=9, ctx=8, ids=(11, 12, 13), kind="quantile"),
                example(0, 3, 1.0, pos=4, ctx=9, ids=(14, 15, 16), kind="quantile"),
                # two tokens from the top example at context 0: the same passage
                example(0, 4, 0.5, pos=5, ctx=0, ids=(17, 18, 19), kind="quantile")]  # fmt: skip
    assert repeated_windows(top) == 1
    out = distinct_examples(top + quantile, w=2)
    assert [(e.kind, e.rank, e.context_index) for e in out] == [
        ("top", 0, 0),
        ("top", 1, 2),
        ("quantile", 0, 7),
        ("quantile", 1, 9),
    ]
    assert repeated_windows(out) == 0


def test_fired_tokens_are_shares_of_the_activation_mass():
    ex = [example(0, 0, 3.0, pos=3, ids=(5, 6, 7)), example(0, 1, 1.0, pos=4, ids=(5, 8, 7)),
          example(0, 2, 0.02, pos=5, ids=(5, 9, 7))]  # fmt: skip
    got = fired_tokens(ex)
    assert [(t.rank, t.token_str) for t in got] == [(0, "t6"), (1, "t8")]
    assert got[0].share == pytest.approx(3.0 / 4.02)


def test_logit_histograms_count_every_token_between_min_and_max():
    g = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(5, 8, generator=g), torch.randn(50, 8, generator=g)
    counts, ranges = logit_histograms(W_dec, W_U, None, bins=7)
    logits = (W_dec @ W_U.T).numpy()
    assert counts.shape == (5, 7) and (counts.sum(1) == 50).all()
    np.testing.assert_allclose(ranges[:, 0], logits.min(1), rtol=1e-5)
    np.testing.assert_allclose(ranges[:, 1], logits.max(1), rtol=1e-5)
    want = np.histogram(logits[2], bins=7, range=(logits[2].min(), logits[2].max()))[0]
    assert np.abs(counts[2] - want).sum() <= 2  # float edges may move a token by one bin


def test_the_projection_pass_fills_the_logit_histograms():
    from saefeat.features.logit_histogram import LogitHistograms
    from saefeat.features.vocab import vocab_projections

    g = torch.Generator().manual_seed(1)
    W_dec, W_U = torch.randn(6, 8, generator=g), torch.randn(30, 8, generator=g)
    shared = LogitHistograms(6, bins=5)
    vocab_projections(W_dec, W_U, None, [str(i) for i in range(30)], 3, on_logits=shared.add)
    counts, ranges = logit_histograms(W_dec, W_U, None, bins=5)
    assert (shared.counts == counts).all() and np.allclose(shared.ranges, ranges)
