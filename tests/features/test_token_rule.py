"""The token rule in feature statistics and live encoding."""

import torch

from saefeat.features.accumulate import FeatureAccumulator
from saefeat.features.live import features_on_text
from saefeat.features.token_rule import excluded_tokens, sae_token_rule
from saefeat.lm import load_model, parse_hook, run_to_hooks
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.storage.exclusion import TokenRule


def _sae(d_in: int, rule: TokenRule | None) -> TopKSAE:
    extra = {"token_rule": rule.to_json()} if rule else {}
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=64, k=4, hook="blocks.1.hook_resid_post",
                            extra=extra))  # fmt: skip
    sae.init_weights(1.0)
    return sae.eval()


def test_excluded_tokens_count_nowhere():
    ctx_len, d_sae = 4, 8
    vals = torch.ones(2 * ctx_len, 1)
    idx = torch.zeros(2 * ctx_len, 1, dtype=torch.long)
    vals[5] = 50.0  # a massive token with a huge activation
    excluded = torch.zeros(2 * ctx_len, dtype=torch.bool)
    excluded[[0, 4, 5]] = True
    acc = FeatureAccumulator(d_sae, 3, 1)
    acc.add(vals, idx, first_context=0, ctx_len=ctx_len, excluded=excluded)
    assert acc.n_tokens == 5 and acc.n_excluded == 3
    assert acc.fires[0] == 5 and acc.act_max[0] == 1.0
    # Equal activations one token apart are one window: its leftmost token (distinct.py).
    assert set(acc.top_pos[0].tolist()) - {-1} <= {1, 2, 3}
    assert acc.top_vals[0, 0] == 1.0


def test_live_encoding_marks_excluded_tokens(tiny_llama):
    lm = load_model(str(tiny_llama))
    hook = "blocks.1.hook_resid_post"
    text = "def f(x): return x + 1"
    acts = run_to_hooks(lm, lm.tokenizer(text, return_tensors="pt").input_ids,
                        [parse_hook(hook)])[hook][0]  # fmt: skip
    norms = acts.norm(dim=1)
    # A median that makes the third token "massive" and no other but position 0.
    median = float(norms[2]) / 10 * 0.999
    assert (norms[1:] > 10 * median).sum() >= 1
    sae = _sae(acts.shape[1], TokenRule(10.0, median))
    marked = excluded_tokens(sae, acts)
    assert marked[0] and marked[2]
    tokens = features_on_text(lm, sae, hook, text)
    assert [t.excluded for t in tokens] == marked.tolist()
    assert all(t.features == [] for t in tokens if t.excluded)
    assert any(t.features for t in tokens if not t.excluded)
    # An SAE trained before rules were recorded: position 0 only.
    assert sae_token_rule(_sae(acts.shape[1], None)) == TokenRule()
    assert excluded_tokens(_sae(acts.shape[1], None), acts).tolist() == [True] + [False] * (
        acts.shape[0] - 1
    )
