"""Which tokens count: one rule for statistics, training, evaluation, indexing and live use.

Two kinds of token carry no feature a person can read and would dominate every number:
position 0 (BOS, the attention sink) and "massive activations" (Sun et al. 2024), a few
tokens, often the one after BOS or a document's first, whose residual norm is tens to
hundreds of times the typical one. Both are left out of training, of the headline
metrics, of feature statistics and examples, and live encoding marks them.

A token is excluded when it is at position 0, or when its norm exceeds `threshold` x the
set's median token norm (position 0 left out of the median). The median comes from the
norm quantiles the set's statistics store; each row's norm is kept in the set
(`norms/<hook>`), computed on first use for sets harvested before it existed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from saefeat.storage.activations import ActivationSet

DEFAULT_THRESHOLD = 10.0


@dataclass(frozen=True)
class TokenRule:
    threshold: float = DEFAULT_THRESHOLD
    # The set's median token norm in raw units; None (an old set without norm
    # statistics): only position 0 is left out.
    median_norm: float | None = None

    @property
    def norm_limit(self) -> float:
        return float("inf") if self.median_norm is None else self.threshold * self.median_norm

    def excluded(self, norms, positions):
        """True where a token is left out; numpy arrays or torch tensors alike."""
        return (positions == 0) | (norms > self.norm_limit)

    def excluded_rows(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.excluded(x.float().norm(dim=-1), positions)

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "median_norm": self.median_norm}

    @classmethod
    def from_json(cls, d: dict | None) -> TokenRule:
        d = d or {}
        return cls(float(d.get("threshold", DEFAULT_THRESHOLD)), d.get("median_norm"))


def rule_for_set(aset: ActivationSet, hook: str, threshold: float = DEFAULT_THRESHOLD) -> TokenRule:
    stats = (aset.stats or {}).get(hook, {})
    median = stats.get("norm_quantiles", {}).get("0.5")
    return TokenRule(float(threshold), None if median is None else float(median))


def _norms_name(hook: str) -> str:
    return f"norms/{hook}"


def row_norms(aset: ActivationSet, hook: str, *, refresh: bool = False) -> np.ndarray:
    """float32 [n_tokens]: each row's L2 norm (NaN where no committed data), stored in the
    set on first use (`refresh`: recompute, as the statistics do at a harvest's end)."""
    aset.acts_array(hook)  # names the hook when it is not in the set
    name = _norms_name(hook)
    if name in aset.group and not refresh:
        return np.asarray(aset.group[name][:])
    norms = np.full(aset.n_tokens, np.nan, dtype=np.float32)
    for s in aset.committed_shards():
        r0, r1 = aset.shard_rows(s)
        norms[r0:r1] = aset.read_shard(s, hook).norm(dim=1).numpy()
    aset.group.require_group("norms").create_array(hook, data=norms, overwrite=True)
    return norms


def excluded_rows(aset: ActivationSet, hook: str, rule: TokenRule) -> np.ndarray:
    """Absolute rows above the rule's norm limit (position 0 is handled by the reader)."""
    if rule.median_norm is None:
        return np.zeros(0, dtype=np.int64)
    norms = row_norms(aset, hook)
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(norms > rule.norm_limit)


def exclusion_report(
    aset: ActivationSet, hook: str, rule: TokenRule, contexts: np.ndarray | None = None
) -> dict:
    """How many tokens the rule leaves out of the given contexts (all: None), and where."""
    keep_ctx = np.ones(aset.n_contexts, bool) if contexts is None else contexts
    dropped = np.zeros(aset.n_contexts, bool)
    dropped[aset.dropped_contexts()] = True
    committed = np.zeros(aset.n_contexts, bool)
    for s in aset.committed_shards():
        c0, c1 = aset.shard_contexts(s)
        committed[c0:c1] = True
    live = keep_ctx & committed & ~dropped
    massive = excluded_rows(aset, hook, rule)
    massive = massive[massive % aset.ctx_len != 0]
    massive = massive[live[massive // aset.ctx_len]]
    positions = Counter((massive % aset.ctx_len).tolist())
    return {
        **rule.to_json(),
        "rule": "position 0"
        if rule.median_norm is None
        else f"position 0 and norm > {rule.threshold:g} x median norm",
        "tokens": int(live.sum()) * aset.ctx_len,
        "excluded": int(live.sum()) + len(massive),
        "position_0": int(live.sum()),
        "massive": len(massive),
        # the positions where massive tokens sit, most frequent first
        "massive_positions": {str(p): n for p, n in positions.most_common(10)},
    }
