"""The tokens a feature fires on: each focus token's share of the activation mass of the
feature's top examples (so token search finds features by what they fire on, without an
explanation; stored as `fired_tokens`, searched by storage/catalog/token_search.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from saefeat.features.records import FeatureExample, FiredTokenShare

MAX_FIRED_TOKENS = 5  # kept per feature, largest share first
MIN_SHARE = 0.05  # a token with less of the mass is not kept


def fired_tokens(
    examples: Iterable[FeatureExample], n: int = MAX_FIRED_TOKENS, min_share: float = MIN_SHARE
) -> list[FiredTokenShare]:
    """Per feature, up to `n` focus tokens of its top examples with at least `min_share` of
    their activation mass, largest share first (ties: the token's text)."""
    mass: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in examples:
        if e.kind == "top" and e.activation > 0 and 0 <= e.focus < len(e.token_strs):
            mass[e.feature_index][e.token_strs[e.focus]] += e.activation
    out = []
    for f in sorted(mass):
        tokens = mass[f]
        total = sum(tokens.values())
        ranked = sorted(tokens.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [(t, m / total) for t, m in ranked if m / total >= min_share][:n]
        out.extend(FiredTokenShare(f, rank, t, s) for rank, (t, s) in enumerate(kept))
    return out
