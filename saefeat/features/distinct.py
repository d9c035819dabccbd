"""One window once: a feature's examples never show the same passage twice.

Two ways the same text came back in the top examples: a feature that fires on a run of
tokens has its top examples one token apart in one context (their windows share most of
their text: the same window four times, the focus moved by one), and a corpus repeats
itself (boilerplate, the same docstring in many classes), so the same tokens sit in
different contexts. So, two examples of a feature are the same window when

  * they are in the same context with their focus tokens at most `w` apart (their
    `2w + 1`-token windows share more than half their tokens), or
  * their windows hold the same tokens with the focus at the same place.

  * The accumulator keeps as top examples only *peaks*: firings with no stronger
    activation of the feature within `w` tokens in their context (`is_peak`; ties: the
    leftmost), so a run shows once, at its strongest token; and it keys every token by
    a hash of its window's tokens (`window_keys`) and keeps one entry per key and
    feature, the strongest (`best_per_key`; accumulate.py).
  * At build time (`distinct_examples`) the examples are checked again, and quantile
    samples drop windows that repeat a top example or an earlier sample, so the
    "across the range" section does not open with the top examples again.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from saefeat.features.records import FeatureExample

# Two polynomial hashes modulo a 31-bit prime, side by side in one int64: products stay
# below 2**62, so nothing overflows, and two windows collide with odds ~2**-62.
_PRIME = 2**31 - 1
_BASES = (1_000_003, 1_234_567_891)
_OUTSIDE = 1  # tokens beyond the context's ends (ids are shifted by 2)


def window_keys(tokens: torch.Tensor, w: int) -> torch.Tensor:
    """int64 [n_contexts * ctx_len]: a key of the window of `2w + 1` tokens around each
    token of `tokens` [n_contexts, ctx_len], within its context."""
    n_ctx, ctx_len = tokens.shape
    padded = F.pad(tokens.long() + 2, (w, w), value=_OUTSIDE)
    h1 = torch.zeros(n_ctx, ctx_len, dtype=torch.long, device=tokens.device)
    h2 = torch.zeros_like(h1)
    for j in range(2 * w + 1):
        column = padded[:, j : j + ctx_len]
        h1 = (h1 * _BASES[0] + column) % _PRIME
        h2 = (h2 * _BASES[1] + column) % _PRIME
    return ((h1 << 31) | h2).reshape(-1)


def is_peak(windows: torch.Tensor, value: torch.Tensor, w: int) -> torch.Tensor:
    """bool [n]: whether each firing (its window of the feature's activations `windows`
    [n, 2w + 1], centred on it, and its `value`) is no weaker than anything within `w`
    tokens, and stronger than everything to its left (so of equal neighbours the
    leftmost is the peak)."""
    v = value[:, None]
    return (windows[:, :w] < v).all(1) & (windows[:, w + 1 :] <= v).all(1)


def best_per_key(group: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Indices of one entry per (group, key): the one with the largest value (ties: the
    first). Three stable sorts, no loop."""
    order = torch.sort(value, descending=True, stable=True).indices
    order = order[torch.sort(key[order], stable=True).indices]
    order = order[torch.sort(group[order], stable=True).indices]
    g, k = group[order], key[order]
    first = torch.ones_like(g, dtype=torch.bool)
    first[1:] = (g[1:] != g[:-1]) | (k[1:] != k[:-1])
    return order[first]


def _window(e: FeatureExample) -> tuple:
    return e.focus, tuple(e.token_ids)


def distinct_examples(examples: Iterable[FeatureExample], w: int) -> list[FeatureExample]:
    """`examples` (each feature's top ones by rank, then its quantile samples by rank)
    with repeats gone: an example whose window (tokens and focus) an earlier one of its
    feature has, or whose focus is within `w` tokens of an earlier one's in the same
    context; top examples come first, so quantile samples never repeat them. Ranks are
    renumbered 0.. within each feature and kind."""
    windows: dict[int, set] = {}
    places: dict[tuple[int, int], list[int]] = {}  # (feature, context) -> focus positions
    rank: dict[tuple[int, str], int] = {}
    out = []
    for e in sorted(examples, key=lambda e: (e.kind != "top", e.feature_index, e.rank)):
        mine = windows.setdefault(e.feature_index, set())
        window = _window(e)
        near = places.setdefault((e.feature_index, e.context_index), [])
        if window in mine or (e.context_index >= 0 and any(abs(p - e.position) <= w
                                                           for p in near)):  # fmt: skip
            continue
        mine.add(window)
        near.append(e.position)
        slot = (e.feature_index, e.kind)
        e.rank = rank.get(slot, 0)
        rank[slot] = e.rank + 1
        out.append(e)
    return out
