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
