"""The token rule an SAE was trained under, for indexing and live encoding.

Training records the rule (storage/exclusion.py) in the SAE's config (`extra.token_rule`:
threshold and the training set's median norm). An SAE trained before rules were recorded
gets its set's rule at the default threshold when the set is at hand (indexing), and
position 0 only when it is not (live encoding).

A crosscoder's recorded rule is its first source's; each other source has its own median
norm, so `source_token_rules` gives each source its set's rule at the recorded threshold
(as training read them: saefeat/training/trainer.py).
"""

from __future__ import annotations

import torch

from saefeat.sae import SparseAutoencoder
from saefeat.sae.base import SAEConfig
from saefeat.storage.activations import ActivationSet
from saefeat.storage.exclusion import DEFAULT_THRESHOLD, TokenRule, rule_for_set


def sae_token_rule(sae: SparseAutoencoder, aset: ActivationSet | None = None) -> TokenRule:
    return config_token_rule(sae.cfg, aset)


def config_token_rule(cfg: SAEConfig, aset: ActivationSet | None = None) -> TokenRule:
    if "token_rule" in cfg.extra:
        return TokenRule.from_json(cfg.extra["token_rule"])
    if aset is not None and cfg.hook:
        return rule_for_set(aset, cfg.hook)
    return TokenRule()


def source_token_rules(cfg: SAEConfig, sets: list[ActivationSet]) -> list[TokenRule]:
    """A crosscoder's rule per source (`sets`: each source's set, in the cfg's order)."""
    recorded = cfg.extra.get("token_rule")
    threshold = TokenRule.from_json(recorded).threshold if recorded else DEFAULT_THRESHOLD
    return [rule_for_set(aset, source["hook"], threshold)
            for aset, source in zip(sets, cfg.sources or [], strict=True)]  # fmt: skip


def excluded_tokens(sae: SparseAutoencoder, acts: torch.Tensor) -> torch.Tensor:
    """bool [seq]: the tokens of one sequence's activations [seq, d] the rule leaves out."""
    pos = torch.arange(acts.shape[0], device=acts.device)
    return sae_token_rule(sae).excluded_rows(acts, pos)
