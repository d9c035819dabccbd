"""What indexing produces for one SAE, before it goes into the catalog.

Plain dataclasses over numpy arrays so the index worker (torch, Ray) and the catalog
writer (SQLAlchemy) share one shape without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FeatureExample:
    """One example of one feature: a token window around the focus token.

    kind "top": the N strongest activations (rank 0 = strongest). kind "quantile": samples
    spread over the activation range (rank orders them by activation, strongest first)."""

    feature_index: int
    rank: int  # 0 = strongest
    activation: float  # value at the focus token
    context_index: int  # row in the activation set's `tokens` array
    position: int  # focus token's position inside its context
    token_ids: list[int]
    token_strs: list[str]
    values: list[float]  # the feature's activation on each token of the window
    focus: int  # index of the focus token inside the window
    kind: str = "top"  # "top" or "quantile" (issue 3)


@dataclass
class VocabProjection:
    """Tokens the feature's decoder row promotes (top) and suppresses (bottom)."""

    feature_index: int
    top_ids: list[int]
    top_strs: list[str]
    top_values: list[float]
    bottom_ids: list[int]
    bottom_strs: list[str]
    bottom_values: list[float]


@dataclass
class FeatureIndex:
    """Everything indexing computed for one SAE. Arrays are indexed by feature."""

    d_sae: int
    n_tokens: int  # tokens the statistics were computed over
    density: np.ndarray  # fraction of tokens where the feature fired, [d_sae]
    max_activation: np.ndarray  # [d_sae]
    mean_activation: np.ndarray  # mean over the tokens where it fired, [d_sae]
    examples: list[FeatureExample] = field(default_factory=list)
    projections: list[VocabProjection] = field(default_factory=list)
    histogram_edges: np.ndarray | None = None  # shared log-spaced bin edges
    histograms: np.ndarray | None = None  # [d_sae, n_bins] counts
    # Nearest features by decoder cosine: [d_sae, n] feature indices (-1 = none) and cosines.
    neighbour_indices: np.ndarray | None = None
    neighbour_cosines: np.ndarray | None = None
