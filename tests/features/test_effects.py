"""features/effects.py: the measured effect on the tiny Llama, the de-biased projection,
and the two numbers the bench reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saefeat.features import effects as E
from saefeat.features import vocab
from saefeat.lm import load_model, parse_hook, run_to_hooks

HOOK = "blocks.1.hook_resid_post"  # two layers, the final norm and the unembedding after it


@pytest.fixture(scope="module")
def lm(tiny_llama):
    return load_model(str(tiny_llama))


def _tokens(lm, n_ctx: int = 5, ctx_len: int = 24, seed: int = 0) -> np.ndarray:
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n_ctx, ctx_len), generator=g).numpy()


def _strings(lm) -> list[str]:
    return [str(i) for i in range(lm.model.get_output_embeddings().weight.shape[0])]


def _pairs(features, contexts, positions, activation: float) -> E.EffectPairs:
    n = len(features)
    return E.EffectPairs(np.array(features), np.array(contexts), np.array(positions),
                         np.full(n, activation, dtype=np.float32))  # fmt: skip


class _Added:
    """A feature that is really there: `a * direction` added at the hook on every token."""

    def __init__(self, lm, direction: torch.Tensor):
        self.module, self.direction = lm.module_for(parse_hook(HOOK)), direction

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda m, a, out: out + self.direction)

    def __exit__(self, *exc):
        self.handle.remove()


def _brute_force(lm, W_dec, tokens, f, c, p, a, score="logprob") -> torch.Tensor:
    """p_clean - p_removed (or of log p) at position p of context c, a plain forward each."""
    ids = torch.from_numpy(tokens[c : c + 1, : p + 1])
    with torch.inference_mode():
        clean = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1], -1)
        module = lm.module_for(parse_hook(HOOK))

        def remove(m, args, out):
            out = out.clone()
            out[0, p] -= a * W_dec[f]
            return out

        handle = module.register_forward_hook(remove)
        try:
            removed = torch.log_softmax(lm.model(input_ids=ids).logits[0, -1], -1)
        finally:
            handle.remove()
    return clean - removed if score == "logprob" else clean.exp() - removed.exp()


def test_removing_nothing_changes_nothing(lm):
    tokens = _tokens(lm)
    W_dec = torch.randn(4, lm.d_model)
    pairs = _pairs([0, 0, 1, 3], [0, 1, 2, 4], [3, 10, 23, 1], 0.0)
    out = E.measured_effects(lm, W_dec, HOOK, tokens, pairs, _strings(lm), n=5)
    assert [e.feature_index for e in out] == [0, 1, 3]
    assert all(e.method == "measured" for e in out)
    for e in out:
        assert max(abs(v) for v in e.up_values + e.down_values) < 1e-5


def test_packed_copies_give_what_plain_forwards_give(lm, monkeypatch):
    """The packed sequence (prefix + clean and edited copies, 4D mask) against one plain
    forward per pair, also when every budget forces many small batches and passes."""
    tokens = _tokens(lm, seed=1)
    torch.manual_seed(1)
    W_dec = torch.randn(3, lm.d_model)
    pairs = _pairs([0, 0, 1, 2, 2], [0, 3, 0, 2, 2], [4, 17, 9, 6, 20], 2.5)
    want = {}
    for score in ("logprob", "prob"):
        for f in range(3):
            sel = np.flatnonzero(pairs.features == f)
            deltas = [_brute_force(lm, W_dec, tokens, f, pairs.contexts[i], pairs.positions[i],
                                   2.5, score) for i in sel]  # fmt: skip
            want[score, f] = torch.stack(deltas).mean(0)
    strings = _strings(lm)
    runs = [("logprob", (8192, 512, 32, E.ACCUMULATOR_BYTES)), ("logprob", (30, 2, 1, 1)),
            ("prob", (8192, 512, 32, E.ACCUMULATOR_BYTES))]  # fmt: skip
    for score, budgets in runs:
        for name, value in zip(("BATCH_TOKENS", "LOGIT_ROWS", "MAX_COPIES"), budgets[:3],
                               strict=True):  # fmt: skip
            monkeypatch.setattr(E, name, value)
        got = E.measured_effects(lm, W_dec, HOOK, tokens, pairs, strings, n=10, score=score,
                                 accumulator_bytes=budgets[3])  # fmt: skip
        assert [e.feature_index for e in got] == [0, 1, 2]
        for e in got:
            top = want[score, e.feature_index].topk(10)
            assert e.up_ids == top.indices.tolist()
            np.testing.assert_allclose(e.up_values, top.values.numpy(), atol=1e-6, rtol=1e-4)
            bottom = want[score, e.feature_index].topk(10, largest=False)
            assert e.down_ids == bottom.indices.tolist()


def test_the_tail_from_hook_activations_gives_what_plain_forwards_give(lm, monkeypatch):
    """Only the layers after the hook run, from given activations (the set's): the same
    numbers as whole forwards, with the blocks put back afterwards."""
    tokens = _tokens(lm, seed=3)
    torch.manual_seed(3)
    W_dec = torch.randn(2, lm.d_model)
    pairs = _pairs([0, 0, 1], [0, 2, 2], [6, 11, 19], 1.5)
    acts = run_to_hooks(lm, torch.from_numpy(tokens), [parse_hook(HOOK)])[HOOK]
    read = []

    def hook_acts(contexts):
        read.append(contexts.tolist())
        return acts[torch.from_numpy(contexts)]

    blocks = list(lm.blocks)
    monkeypatch.setattr(E, "BATCH_TOKENS", 40)  # several forwards
    got = E.measured_effects(lm, W_dec, HOOK, tokens, pairs, _strings(lm), n=10,
                             hook_acts=hook_acts, context_block=2)  # fmt: skip
    assert list(lm.blocks) == blocks
    # Context 2 holds two pairs in one packed sequence: read once.
    assert read == [[0], [2]]
    for e in got:
        sel = np.flatnonzero(pairs.features == e.feature_index)
        deltas = [
            _brute_force(lm, W_dec, tokens, e.feature_index, pairs.contexts[i],
                         pairs.positions[i], 1.5, "prob")
            for i in sel
        ]  # fmt: skip
        want = torch.stack(deltas).mean(0)
        assert e.up_ids == want.topk(10).indices.tolist()
        np.testing.assert_allclose(e.up_values, want.topk(10).values.numpy(), atol=1e-6, rtol=1e-3)
    # A hook the tail cannot start from (an MLP output) falls back to whole forwards.
    assert not E.tail_supported("blocks.1.hook_mlp_out")
    assert E.tail_supported("blocks.1.hook_resid_pre") and not E.tail_supported(
        "blocks.0.hook_resid_pre"
    )


def test_a_feature_that_pushes_a_token_has_it_first_on_its_measured_list(lm):
    """A decoder row along W_U[up] - W_U[down], really present in the run (added at the
    hook), makes `up` more likely and `down` less: removing it says so."""
    tokens = _tokens(lm, seed=2)
    W_U = lm.model.get_output_embeddings().weight.detach()
    up, down = 37, 101
    direction = W_U[up] - W_U[down]
    direction = direction / direction.norm()
    torch.manual_seed(2)
    W_dec = torch.randn(3, lm.d_model) / math.sqrt(lm.d_model)
    W_dec[1] = direction
    a = 4.0
    pairs = _pairs([1, 1, 1, 1], [0, 1, 2, 3], [5, 9, 14, 20], a)
    for score in ("prob", "logprob"):
        with _Added(lm, a * direction):
            (effect,) = E.measured_effects(lm, W_dec, HOOK, tokens, pairs, _strings(lm), n=5,
                                           score=score)  # fmt: skip
        assert effect.up_ids[0] == up and effect.up_strs[0] == str(up)
        assert effect.up_values[0] > 0 > effect.down_values[0]
        # In log-probability the suppressed token gains most once the feature is gone; in
        # probability the mass `up` loses goes to the likeliest tokens instead.
        assert (effect.down_ids[0] == down) == (score == "logprob")


def test_an_encoder_or_no_pairs_gives_no_measured_effect(lm):
    empty = _pairs([], [], [], 1.0)
    assert E.measured_effects(lm, torch.zeros(2, lm.d_model), HOOK, _tokens(lm), empty, []) == []


def test_effect_pairs_take_each_features_strongest_filled_slots():
    inf = -float("inf")
    vals = torch.tensor([[5.0, 4.0, 3.0], [2.0, inf, inf], [inf, inf, inf]])
    ctx = torch.tensor([[7, 8, 9], [1, -1, -1], [-1, -1, -1]])
    pos = torch.tensor([[1, 2, 3], [4, -1, -1], [-1, -1, -1]])
    pairs = E.effect_pairs(vals, ctx, pos, 2)
    assert pairs.features.tolist() == [0, 0, 1]
    assert pairs.contexts.tolist() == [7, 8, 1]
    assert pairs.positions.tolist() == [1, 2, 4]
    assert pairs.activations.tolist() == [5.0, 4.0, 2.0]
    assert len(E.effect_pairs(vals, ctx, pos, 0)) == 0


# ---- de-biased projection ------------------------------------------------------------


def _biased_weights(seed: int = 0):
    """64 features, 300 tokens; token 0's unembedding lies along a direction every decoder
    row shares, so the raw direct path puts it on top of almost every list; feature 3 is
    built to promote token 7 and feature 5 to suppress token 11."""
    g = torch.Generator().manual_seed(seed)
    d, n_feat, vocab = 32, 64, 300
    W_U = torch.randn(vocab, d, generator=g)
    common = torch.randn(d, generator=g)
    common /= common.norm()
    W_dec = torch.randn(n_feat, d, generator=g) * 0.3 + common
    W_U[0] = 12 * common
    scale = torch.rand(d, generator=g) + 0.5
    # Along W_U[t] once the final norm's scale is applied.
    W_dec[3] += 3 * (W_U[7] / scale) / (W_U[7] / scale).norm()
    W_dec[5] -= 3 * (W_U[11] / scale) / (W_U[11] / scale).norm()
    return W_dec, W_U, scale, [f"t{i}" for i in range(vocab)]


def test_debiased_demotes_a_token_every_feature_promotes():
    from saefeat.features.vocab import vocab_projections

    W_dec, W_U, scale, strings = _biased_weights()
    raw = vocab_projections(W_dec, W_U, scale, strings, n=10)
    debiased = E.debiased_projections(W_dec, (W_U, scale), strings, n=10)
    assert sum(p.top_ids[0] == 0 for p in raw) >= 60  # the fragment heads the raw lists
    assert E.fragment_share_top10([p.top_ids for p in raw]) >= 0.9
    assert sum(e.up_ids[0] == 0 for e in debiased) <= 3
    assert E.fragment_share_top10([e.up_ids for e in debiased]) < 0.4
    # What a feature was built to do survives the de-biasing.
    assert debiased[3].up_ids[0] == 7 and debiased[3].up_strs[0] == "t7"
    assert debiased[5].down_ids[0] == 11
    assert [e.method for e in debiased] == ["debiased"] * 64
    assert [e.feature_index for e in debiased] == list(range(64))


def test_token_baselines_are_the_mean_and_std_over_features():
    W_dec, W_U, scale, _ = _biased_weights(seed=1)
    logits = (W_dec * scale) @ W_U.T
    mean, std = E.token_baselines(W_dec, W_U, scale)
    torch.testing.assert_close(mean, logits.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std, logits.std(0, correction=0), rtol=1e-4, atol=1e-4)


def test_debiased_values_are_z_scores_in_blocks(monkeypatch):
    W_dec, W_U, scale, strings = _biased_weights(seed=2)
    monkeypatch.setattr(vocab, "_BLOCK", 7)  # blocks that do not divide the features
    logits = (W_dec * scale) @ W_U.T
    z = (logits - logits.mean(0)) / logits.std(0, correction=0)
    out = E.debiased_projections(W_dec, (W_U, scale), strings, n=4)
    for f in (0, 6, 7, 63):
        np.testing.assert_allclose(out[f].up_values, z[f].topk(4).values.numpy(), rtol=1e-3)
        assert out[f].down_ids == z[f].topk(4, largest=False).indices.tolist()


# ---- the bench's numbers -------------------------------------------------------------


def test_fragment_share_top10():
    lists = [[1, 2, 3], ["x", 2], [2] + list(range(100, 120)), [5, 6], []]
    assert E.fragment_share_top10(lists) == pytest.approx(3 / 4)  # token 2; [] not counted
    # Only the first 10 count: token 9 is 11th in the second list.
    assert E.fragment_share_top10([[9], list(range(10, 20)) + [9]]) == pytest.approx(1 / 2)
    assert E.fragment_share_top10([[], []]) == 0.0
    assert E.fragment_share_top10([[4, 4, 4]]) == 1.0  # a token counts once per list


def test_overlap_at_10():
    a = [list(range(10)), list(range(10)), [1, 2], []]
    b = [list(range(5, 15)), list(range(10)), [2, 3], [1]]
    # 5/10, 10/10, 1/10 (out of 10, not out of the shorter list); the empty pair is skipped.
    assert E.overlap_at_10(a, b) == pytest.approx((0.5 + 1.0 + 0.1) / 3)
    assert math.isnan(E.overlap_at_10([[]], [[1]]))
    with pytest.raises(ValueError):
        E.overlap_at_10([[1]], [[1], [2]])
