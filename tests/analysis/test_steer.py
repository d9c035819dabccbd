"""Steering by SAE features on real models: the effect is measured, not assumed."""

from __future__ import annotations

import math

import pytest
import torch

from saefeat.analysis.steer import (
    DefaultCache,
    FeatureStrength,
    SteerRequest,
    check_request,
    encode_prompt,
    in_max_activation_units,
    make_edit,
    steer,
)
from saefeat.errors import SpecError
from saefeat.lm import cached_model, parse_hook, run_to_hooks
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE


def random_sae(d_in: int, d_sae: int, hook: str, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    return TopKSAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=8, hook=hook)).eval()


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    hook = "blocks.2.hook_resid_post"
    return cached_model(str(tiny_llama), None, "cpu"), random_sae(64, 96, hook), hook


def request(*features, method="add", temperature=0.9, seed=3, n=12, prompt="def add(a, b):"):
    return SteerRequest(
        prompt, tuple(FeatureStrength(i, s) for i, s in features), method, temperature, seed, n
    )


def test_strength_zero_add_reproduces_the_default_generation(tiny):
    lm, sae, hook = tiny
    result = steer(lm, sae, hook, request((5, 0.0), (17, 0.0)))
    assert len(result.default.token_ids) > 0
    assert result.steered.token_ids == result.default.token_ids
    assert result.steered.text == result.default.text
    # One batch (row 0 default, row 1 steered): rows may differ in the last bits.
    torch.testing.assert_close(torch.tensor(result.steered.promoted_logprobs),
                               torch.tensor(result.default.promoted_logprobs))  # fmt: skip


def test_a_one_token_prompt_steers_the_generated_positions(tiny):
    lm, sae, hook = tiny
    result = steer(lm, sae, hook, request((5, 40.0), method="clamp", prompt="x", n=4))
    assert len(lm.tokenizer("x").input_ids) == 1
    assert result.steered.promoted_logprobs[1:] != result.default.promoted_logprobs[1:]
    assert result.steered.promoted_logprobs[0] == result.default.promoted_logprobs[0]


def test_steering_changes_sampled_text_and_seed_fixes_it(tiny):
    lm, sae, hook = tiny
    strong = steer(lm, sae, hook, request((5, 40.0)))
    again = steer(lm, sae, hook, request((5, 40.0)))
    assert strong.steered.token_ids == again.steered.token_ids  # same seed, same text
    assert strong.default.token_ids == again.default.token_ids
    assert strong.steered.promoted_logprobs != strong.default.promoted_logprobs


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out",
                                  "blocks.1.hook_attn_out"])  # fmt: skip
def test_every_hook_kind_steers(tiny, hook):
    lm, _, _ = tiny
    sae = random_sae(64, 96, hook)
    result = steer(lm, sae, hook, request((3, 60.0), method="clamp"))
    assert result.steered.promoted_logprobs != result.default.promoted_logprobs


def test_clamp_sets_the_feature_and_keeps_the_error_term(tiny):
    lm, sae, hook = tiny
    ids = lm.tokenizer("class Point:", return_tensors="pt").input_ids
    x = run_to_hooks(lm, ids, [parse_hook(hook)])[hook][0]
    clamped = make_edit(sae, request((4, 7.5), method="clamp"))(x)
    z = sae.dense_activations(x)
    # Error term kept: x' - x equals the change of the reconstruction, which only moves
    # along feature 4's decoder row by (7.5 - z_4).
    expected = x + (7.5 - z[:, 4:5]) * sae.W_dec[4]
    torch.testing.assert_close(clamped, expected, atol=1e-4, rtol=1e-4)
    same = make_edit(sae, request((4, 0.0), method="clamp"))
    torch.testing.assert_close(same(x), x - z[:, 4:5] * sae.W_dec[4], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(), "features"),
        (request((96, 1.0)), "features.0.index"),
        (request((-1, 1.0)), "features.0.index"),
        (request((1, math.nan)), "features.0.strength"),
        (request((1, math.inf)), "features.0.strength"),
        (request((1, 1.0), (1, 2.0)), "features.1.index"),
        (request((1, 1.0), n=65), "max_new_tokens"),
        (request((1, 1.0), n=0), "max_new_tokens"),
        (request((1, 1.0), temperature=-1.0), "temperature"),
        (request((1, 1.0), method="scale"), "method"),
        (request((1, 1.0), prompt="  "), "prompt"),
        (request((1, 1.0), seed=-1), "seed"),
        (request((1, 1.0), seed=2**70), "seed"),  # past torch's manual_seed
    ],
)
def test_bad_requests_name_the_field(req, field):
    with pytest.raises(SpecError) as err:
        check_request(req, d_sae=96, max_new_tokens=64)
    assert err.value.field == field


@pytest.mark.parametrize("temperature", [1e-50, 1e-320])
def test_a_tiny_temperature_samples_like_greedy(tiny, temperature):
    lm, sae, hook = tiny  # logits / 1e-50 overflow float32: inf - inf was nan
    greedy = steer(lm, sae, hook, request((5, 40.0), temperature=0.0, n=4))
    tiny_t = steer(lm, sae, hook, request((5, 40.0), temperature=temperature, n=4))
    assert tiny_t.default.token_ids == greedy.default.token_ids
    assert tiny_t.steered.token_ids == greedy.steered.token_ids


def test_prompt_over_the_context_is_refused(tiny):
    lm, _, _ = tiny  # the tiny model's context is 512 tokens
    long = request((1, 1.0), prompt="word " * 600)
    with pytest.raises(SpecError) as err:
        encode_prompt(lm, long)
    assert err.value.field == "prompt"


def test_clamping_high_raises_the_promoted_tokens_on_smollm2():
    """SmolLM2-135M, a late residual hook: clamping a feature high makes its top promoted
    tokens (decoder row through the unembedding) more likely at every step on average."""
    lm = cached_model("smollm2-135m", None, "cpu")
    hook = "blocks.20.hook_resid_post"
    sae = random_sae(lm.d_model, 256, hook)
    prompt = "The capital of France is"
    base = request((7, 100.0), method="clamp", temperature=0.7, seed=1, n=8, prompt=prompt)
    raised = steer(lm, sae, hook, base)
    (steered,), (default,) = (raised.steered.mean_promoted_logprob(),
                              raised.default.mean_promoted_logprob())  # fmt: skip
    print(f"mean log-prob of feature 7's top tokens: default {default:.3f}, clamped {steered:.3f}")
    assert steered > default + 0.5
    zero = steer(lm, sae, hook, SteerRequest(prompt, (FeatureStrength(7, 0.0),), "add", 0.7, 1, 8))
    assert zero.steered.token_ids == zero.default.token_ids == raised.default.token_ids


def test_strength_counts_multiples_of_the_max_activation(tiny):
    """Neuronpedia's units: a feature with max activation m at strength 2 adds exactly
    2m x W_dec[f] (add) and is set to exactly 2m (clamp)."""
    lm, sae, hook = tiny
    m = 0.37
    ids = lm.tokenizer("class Point:", return_tensors="pt").input_ids
    x = run_to_hooks(lm, ids, [parse_hook(hook)])[hook][0]
    added = in_max_activation_units(request((4, 2.0)), {4: m})
    assert added.features[0].value == pytest.approx(2 * m)
    torch.testing.assert_close(make_edit(sae, added)(x), x + 2 * m * sae.W_dec[4])
    clamped = in_max_activation_units(request((4, 2.0), method="clamp"), {4: m})
    z = sae.dense_activations(x)
    torch.testing.assert_close(make_edit(sae, clamped)(x), x + (2 * m - z[:, 4:5]) * sae.W_dec[4],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    # A raw strength is its own unit: 2 adds 2 x W_dec[4], not 2m x W_dec[4].
    torch.testing.assert_close(make_edit(sae, request((4, 2.0)))(x), x + 2 * sae.W_dec[4])


@pytest.mark.parametrize("max_acts", [{}, {4: 0.0}, {4: math.nan}])
def test_a_feature_without_a_max_activation_has_no_multiple(max_acts):
    with pytest.raises(SpecError) as err:
        in_max_activation_units(request((1, 1.0), (4, 2.0)), {1: 0.5, **max_acts})
    assert err.value.field == "features.1.strength" and "raw" in str(err.value)


def test_the_default_continuation_is_kept_and_not_generated_again(tiny, monkeypatch):
    """The second request with the same prompt, seed, temperature and length (other
    features, other strength) generates only the steered run: one row, not two."""
    from saefeat.analysis import steer as steer_module

    lm, sae, hook = tiny
    rows: list[int] = []
    sample = steer_module._sample

    def counting(lm_, ids, req, watch, n_rows):
        rows.append(n_rows)
        return sample(lm_, ids, req, watch, n_rows)

    monkeypatch.setattr(steer_module, "_sample", counting)
    cache = DefaultCache(maxsize=2)
    first = steer(lm, sae, hook, request((5, 40.0), prompt="kept?"), cache=cache)
    again = steer(lm, sae, hook, request((9, -3.0), (5, 1.0), prompt="kept?"), cache=cache)
    assert rows == [2, 1]  # a batch of default + steered, then the steered run alone
    assert (first.default_cached, again.default_cached) == (False, True)
    assert (cache.misses, cache.hits) == (1, 1)
    assert again.default.token_ids == first.default.token_ids
    # Feature 9's promoted tokens were not watched before: one teacher-forced forward
    # fills them in, equal to what a fresh generation reports.
    fresh = steer(lm, sae, hook, request((9, -3.0), (5, 1.0), prompt="kept?"), cache=None)
    torch.testing.assert_close(torch.tensor(again.default.promoted_logprobs),
                               torch.tensor(fresh.default.promoted_logprobs),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    assert rows == [2, 1, 2]
    for prompt in ("other", "another"):  # bounded: the oldest entry goes
        steer(lm, sae, hook, request((5, 1.0), prompt=prompt), cache=cache)
    assert len(cache) == 2
    steer(lm, sae, hook, request((5, 1.0), prompt="kept?"), cache=cache)
    assert rows[-1] == 2
    # Another seed, temperature or length is another default.
    steer(lm, sae, hook, request((5, 1.0), prompt="kept?", seed=4), cache=cache)
    assert rows[-1] == 2


def test_the_pages_suggest_the_default_strength():
    from saefeat.analysis.steer import DEFAULT_STRENGTH
    from saefeat.api.page_routes import STEER_DEFAULT_STRENGTH

    assert STEER_DEFAULT_STRENGTH == DEFAULT_STRENGTH
