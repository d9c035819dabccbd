"""IndexSpec: each feature's statistics, examples, vocabulary projection and neighbours."""

from __future__ import annotations

from pydantic import Field

from saefeat.specs.base import Id, Spec


class IndexSpec(Spec):
    ID_PREFIX = "index"
    ID_FIELDS = ("sae", "n_examples", "window", "n_vocab", "n_quantile_bins",
                 "per_quantile_bin", "n_neighbours")  # fmt: skip
    # Joined after index ids were in use: hashed only when not at its default.
    ID_FIELDS_IF_SET = ("n_effect_contexts", "umap")
    RUN_FIELDS = ("batch_contexts", "device")

    sae: Id = Field(description="SAE id in the catalog")
    n_examples: int = Field(20, ge=1, le=1000, description="top examples per feature")
    window: int = Field(8, ge=0, le=128, description="tokens either side of an example's focus")
    n_vocab: int = Field(
        20,
        ge=1,
        le=200,
        description="top and bottom tokens of the vocabulary projection and of each effect ranking",
    )
    # per_quantile_bin examples from each of n_quantile_bins equal-width slices of
    # (0, max activation].
    n_quantile_bins: int = Field(
        10, ge=0, le=100, description="activation ranges sampled for examples (0: none)"
    )
    per_quantile_bin: int = Field(5, ge=0, le=100, description="examples per range")
    n_neighbours: int = Field(10, ge=0, le=100, description="nearest features by decoder cosine")
    n_effect_contexts: int = Field(
        4, ge=0, le=64,
        description="contexts per feature (its strongest top examples) in which the feature "
        "is removed to measure its effect on the next token; 0: no measured effect",
    )  # fmt: skip
    umap: bool = Field(
        True, description="place every feature on a 2-D UMAP of the decoder directions (the "
        "SAE page's map; seconds for thousands of features, minutes for ~100k)",
    )  # fmt: skip
    batch_contexts: int = Field(32, ge=1, le=4096, description="contexts per SAE pass")
    device: str | None = Field(None, description="cpu, cuda or cuda:N (default: cuda if any)")
