"""What indexing produces for one SAE, before it goes into the catalog.

Plain dataclasses over numpy arrays so the index worker (torch, Ray) and the catalog
writer (SQLAlchemy) share one shape without importing each other.

`FeatureExample` is the one shape of an example everywhere: the index worker makes it,
the catalog writer stores its fields as the `feature_examples` columns of the same names,
`storage/catalog/queries.py` reads it back, `storage/catalog/documents.py` builds the
page's JSON from its field list, the API declares it as its schema (the descriptions
below are the OpenAPI's), `static/feature.js` reads those keys, and the Neuronpedia
export and import carry it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

ExampleKind = Literal["top", "quantile"]


@dataclass(slots=True)
class FeatureExample:
    """One example of one feature: a token window around the focus token.

    kind "top": the N strongest activations (rank 0 = strongest). kind "quantile": samples
    spread over the activation range (rank orders them by activation, strongest first)."""

    feature_index: Annotated[int, Field(description="The feature's index in its SAE")]
    rank: Annotated[int, Field(description="0 = strongest within its kind")]
    activation: Annotated[float, Field(description="Activation at the focus token")]
    context_index: Annotated[
        int, Field(description="Row of the context in the activation set (-1: not known)")
    ]
    position: Annotated[int, Field(description="Focus token's position in its context")]
    token_ids: Annotated[list[int], Field(description="The window's token ids (-1: not known)")]
    token_strs: Annotated[list[str], Field(description="The window's tokens as text")]
    values: Annotated[list[float], Field(description="The feature's activation on each token")]
    focus: Annotated[int, Field(description="Index of the focus token within the window")]
    kind: Annotated[
        ExampleKind,
        Field(description="top: among the strongest; quantile: spread over the activation range"),
    ] = "top"


@dataclass(frozen=True, slots=True)
class FiredTokenShare:
    """A token a feature fires on (features/fired.py; the `fired_tokens` table)."""

    feature_index: int
    rank: int  # 0 = the largest share
    token_str: str  # the focus token as text (' the')
    share: float  # of the activation mass of the feature's top examples, in (0, 1]


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


EffectMethod = Literal["measured", "debiased"]


@dataclass
class TokenEffects:
    """A feature's effect on the next token by one method (features/effects.py; the
    `token_effects` table): the tokens it makes more likely (up) and less likely (down),
    strongest first. measured: mean drop in next-token probability when the feature is
    removed where it fires; debiased: the direct projection's z-score against each
    token's spread over all features."""

    feature_index: int
    method: EffectMethod
    up_ids: list[int]
    up_strs: list[str]
    up_values: list[float]
    down_ids: list[int]
    down_strs: list[str]
    down_values: list[float]


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
    # Effects on the next token (features/effects.py): measured and debiased, per feature.
    effects: list[TokenEffects] = field(default_factory=list)
    # Readable-feature extras (issue 21): each feature's artifact reason or None
    # (features/artifacts.py), the tokens it fires on (features/fired.py), its direct-path
    # logit histogram (features/logit_histogram.py: [d_sae, bins] counts and [d_sae, 2]
    # min/max), and how many equal-width activation bins the quantile samples come from.
    artifacts: list[str | None] | None = None
    fired_tokens: list[FiredTokenShare] = field(default_factory=list)
    logit_histograms: np.ndarray | None = None
    logit_ranges: np.ndarray | None = None
    n_quantile_bins: int = 0
    # Each feature's place on the SAE's map (features/umap_map.py): [d_sae, 2], or None.
    umap: np.ndarray | None = None
    # A crosscoder's (saefeat/sae/crosscoder.py): decoder norm per source [d_sae, n], and
    # with two sources the relative norm [d_sae] and its class per feature.
    decoder_norms: np.ndarray | None = None
    relative_norms: np.ndarray | None = None
    sharing: list[str] | None = None
