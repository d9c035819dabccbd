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
