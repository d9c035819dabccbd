"""The SAE's map (features/umap_map.py): finite, seeded, and it keeps directions apart."""

from __future__ import annotations

import numpy as np
import torch

from saefeat.features.umap_map import umap_layout


def test_the_map_is_finite_seeded_and_separates_directions():
    """Two families of decoder rows (around two orthogonal directions, any norms) land in
    two places; a dead row (norm 0) sits on its nearest live row's point."""
    torch.manual_seed(0)
    d_in, n = 32, 60
    a, b = torch.zeros(d_in), torch.zeros(d_in)
    a[0], b[1] = 1.0, 1.0
    rows = [c + 0.15 * torch.randn(d_in) for c in [a] * (n // 2) + [b] * (n // 2)]
    W = torch.stack(rows) * torch.rand(n, 1).add(0.5) * 100  # cosine ignores norms
    W[5] = 0.0
    xy = umap_layout(W)
    assert xy.shape == (n, 2) and np.isfinite(xy).all()
    assert np.array_equal(xy, umap_layout(W))  # seeded
    fa, fb = xy[: n // 2], xy[n // 2 :]
    live_a = np.delete(fa, 5, axis=0)
    spread = max(np.ptp(live_a, axis=0).max(), np.ptp(fb, axis=0).max())
    gap = np.linalg.norm(live_a.mean(0) - fb.mean(0))
    assert gap > spread, (gap, spread)  # the two families do not mix
    assert any(np.array_equal(xy[5], xy[j]) for j in range(n) if j != 5)


def test_a_tiny_sae_gets_a_line():
    xy = umap_layout(torch.randn(3, 8))
    assert xy.shape == (3, 2) and np.isfinite(xy).all()
