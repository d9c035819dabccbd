"""SideCounts from simulated per-token firing, for the statistics tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from saefeat.analysis.contrast_stats import SideCounts


def simulate_side(
    rng: np.random.Generator, n_docs: int, length: int, rates: np.ndarray, window: int = 32
) -> SideCounts:
    """Documents of `length` tokens; feature f fires on each token with probability
    rates[f], independently, with activation 1 + |N(0, 1)|."""
    fires = rng.random((n_docs, length, rates.size)) < rates
    acts = np.where(fires, 1 + np.abs(rng.standard_normal(fires.shape)), 0.0)
    return SideCounts(
        tokens=np.full(n_docs, length, np.int64),
        fire_count=sp.csr_matrix(fires.sum(axis=1).astype(np.float64)),
        act_sum=sp.csr_matrix(acts.sum(axis=1)),
        window_fire=sp.csr_matrix(fires[:, :window].any(axis=1).astype(np.float64)),
        window=window,
    )
