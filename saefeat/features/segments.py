"""Segmented ranking: sort entries into groups (features, bins) and rank within each,
with two stable sorts instead of a Python loop over groups."""

from __future__ import annotations

import torch


def segment_rank(
    g: torch.Tensor, v: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Order grouping entries by group with values descending, and each entry's rank."""
    by_value = torch.sort(v, descending=True, stable=True).indices
    by_group = torch.sort(g[by_value], stable=True).indices
    order = by_value[by_group]
    gs = g[order]
    counts = torch.bincount(gs, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(gs.numel(), device=g.device) - starts[gs]
    return order, rank


def segment_top(g: torch.Tensor, v: torch.Tensor, n: int, n_groups: int) -> torch.Tensor:
    """Indices of the n largest values of each group."""
    order, rank = segment_rank(g, v, n_groups)
    return order[rank < n]


def merge_into_table(
    keys: torch.Tensor,
    fields: list[tuple[torch.Tensor, float]],
    g: torch.Tensor,
    k: torch.Tensor,
    cand_fields: list[torch.Tensor],
    *,
    largest: bool,
) -> None:
    """Keep, per group, the n best of the held entries and the candidates, in place.

    `keys` [G, n] holds each group's entries best first (empty: -inf if `largest`, else
    +inf); `fields` are (tensor [G, n, ...], value of an empty slot) riding along. The
    candidates are group `g`, key `k` and `cand_fields` ([m, ...] each). Only the groups
    that have candidates are touched: a [groups, 2n] top-k, no sort of the whole table.
    """
    if g.numel() == 0:
        return
    n_groups, n = keys.shape
    empty = -float("inf") if largest else float("inf")
    order, rank = segment_rank(g, k if largest else -k, n_groups)
    keep = rank < n
    order, rank = order[keep], rank[keep]
    groups, row = torch.unique(g[order], return_inverse=True)
    cand_keys = torch.full((groups.numel(), n), empty, dtype=keys.dtype, device=keys.device)
    cand_keys[row, rank] = k[order].to(keys.dtype)
    best = torch.cat([keys[groups], cand_keys], 1).topk(n, dim=1, largest=largest)
    keys[groups] = best.values
    is_empty = best.values == empty
    for (field, fill), cand in zip(fields, cand_fields, strict=True):
        tail = field.shape[2:]
        padded = torch.full(
            (groups.numel(), n, *tail), fill, dtype=field.dtype, device=field.device
        )
        padded[row, rank] = cand[order].to(field.dtype)
        both = torch.cat([field[groups], padded], 1)
        where = best.indices.view(groups.numel(), n, *([1] * len(tail))).expand(-1, -1, *tail)
        picked = both.gather(1, where)
        picked[is_empty] = fill
        field[groups] = picked
