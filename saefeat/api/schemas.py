"""Request and response bodies of the HTTP API (pydantic v2)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.labels import MAX_LABEL_CHARS, text_problem

# Ids and feature indices are 32-bit columns: a larger number in a path is a 422, not a
# database overflow.
MAX_ROW_ID = 2**31 - 1

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a listing; each listing subclasses it under its own name."""

    items: list[Item]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


class FeatureRef(BaseModel):
    sae_id: str
    index: int


class FeatureStats(FeatureRef):
    density: float = Field(description="Fraction of tokens on which the feature fires")
    max_activation: float
    artifact: str | None = Field(
        None,
        description="Why the feature is flagged as an artifact (it fires at fixed positions "
        "or right after special tokens; docs/ARCHITECTURE.md, Indexing); null: it is not",
    )


class FeatureActivity(FeatureStats):
    mean_activation: float = Field(description="Mean over the tokens where it fires")
    decoder_norms: list[float] | None = Field(
        None, description="A crosscoder's: the norm of the feature's decoder row in each "
        "source, in the order of the SAE's `sources`; null for an SAE or a transcoder",
    )  # fmt: skip
    relative_norm: float | None = Field(
        None, description="A two-source crosscoder's: ||d_B|| / (||d_A|| + ||d_B||) of the "
        "decoder norms, 0 = only source A, 1 = only source B; null otherwise",
    )  # fmt: skip
    sharing: Literal["a_only", "shared", "b_only"] | None = Field(
        None, description="A two-source crosscoder's class of the feature by relative norm: "
        "a_only (< 0.1), shared, b_only (> 0.9); null otherwise",
    )  # fmt: skip


class Problem(BaseModel):
    """RFC 9457 problem details: every error the API returns has this body."""

    type: str = Field(description="URI naming the kind of problem", examples=["about:blank"])
    title: str = Field(description="Short summary of the kind of problem")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong here and what to do about it")
    errors: list[FieldError] | None = Field(
        default=None, description="One entry per invalid field (validation errors only)"
    )


class FieldError(BaseModel):
    field: str = Field(description="Name of the field, e.g. 'limit' or 'text'")
    location: str | None = Field(default=None, description="query, path, body or header")
    message: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    schema_revision: str | None = Field(description="Alembic revision of the catalog")


class SourceOut(BaseModel):
    activation_set: str
    hook: str
    model: str | None
    width: int


class SaeSummary(BaseModel):
    id: str
    name: str
    model: str = Field(description="Language model the SAE reads from")
    hook: str = Field(description="Hook point it reads, e.g. blocks.8.hook_resid_post")
    hook_out: str | None = Field(
        None,
        description="A transcoder's output hook (blocks.8.hook_mlp_out), the one its decoder "
        "writes; null for an SAE, which reconstructs `hook`",
    )
    kind: Literal["sae", "transcoder", "crosscoder"] = Field(
        "sae",
        description="sae: reconstructs its hook; transcoder: predicts hook_out from hook; "
        "crosscoder: reconstructs its sources (hooks of sets of one or two models) at once",
    )
    sources: list[SourceOut] | None = Field(
        None, description="a crosscoder's sources, in the order its decoder's columns follow"
    )
    architecture: str
    d_in: int
    d_sae: int
    k: int | None
    metrics: dict[str, Any]
    created_at: datetime


class SaeDetail(SaeSummary):
    cfg: dict[str, Any]
    activation_set_id: str | None
    n_features_indexed: int = Field(description="0 until the SAE has been indexed")


class SaePage(Page[SaeSummary]):
    pass


class FeatureSummary(FeatureActivity):
    label: str | None = Field(description="Text of the current label, if any")


class FeaturePage(Page[FeatureSummary]):
    pass


class LogitHistogram(BaseModel):
    min: float = Field(description="The feature's smallest direct-path logit over the vocabulary")
    max: float = Field(description="Its largest")
    counts: list[int] = Field(description="Tokens per equal-width bin from min to max")


class Histogram(BaseModel):
    edges: list[float] = Field(description="Bin edges of the activation histogram (n_bins + 1)")
    counts: list[int]
    quantile_bins: int | None = Field(
        None, description="Equal-width slices of (0, max activation] the quantile samples "
        "come from (their ranges label the samples)",
    )  # fmt: skip
    logits: LogitHistogram | None = Field(
        None, description="The decoder row's direct-path logits over the whole vocabulary"
    )


class ProjectionToken(BaseModel):
    rank: int = Field(description="0 = strongest")
    token_id: int
    token: str
    value: float


class Projection(BaseModel):
    top: list[ProjectionToken] = Field(description="Tokens the decoder row promotes most")
    bottom: list[ProjectionToken] = Field(description="Tokens it suppresses most")


class EffectToken(ProjectionToken):
    """A token of a measured or de-biased effect (the same fields as a projection's)."""


class EffectSides(BaseModel):
    up: list[EffectToken] = Field(description="Tokens the feature makes more likely")
    down: list[EffectToken] = Field(description="Tokens it makes less likely")


def _no_effects() -> EffectSides:
    return EffectSides(up=[], down=[])


class TokenEffectsOut(BaseModel):
    """A feature's effect on the next token, two ways (saefeat/features/effects.py)."""

    measured: EffectSides = Field(
        default_factory=_no_effects,
        description="Measured (TokenChange): value = mean drop in the token's next-token "
        "probability (0.14 = 14 points) when the feature is removed where it fires most "
        "(up: > 0, down: < 0). Empty for a feature that never fired or an index without it",
    )
    debiased: EffectSides = Field(
        default_factory=_no_effects,
        description="The direct projection ranked against each token's baseline: value = "
        "z-score of the feature's direct logit for the token over all features",
    )


class LabelOut(BaseModel):
    id: int
    text: str
    source: Literal["human", "auto"]
    author: str | None
    score: float | None
    created_at: datetime
    votes_up: int = 0
    votes_down: int = 0


class ScoreOut(BaseModel):
    type: str = Field(
        description="detection, fuzzing, embedding, activation or keyword (activation_sd: "
        "stale, the activation score before revision 0014)"
    )
    value: float = Field(
        description="In [0, 1], 0.5 = chance, 1 = perfect (`meaning` says what it "
        "measures): detection/fuzzing balanced accuracy, embedding/activation/keyword AUROC"
    )
    meaning: str = Field("", description="What this score type measures, in words")
    n: int = Field(description="Windows the score rests on")
    scorer_model: str | None
    details: dict[str, Any] = Field(description="The windows it was scored on, and more")
    created_at: datetime


class ExplanationOut(BaseModel):
    label_id: int
    text: str
    explainer: str = Field(description="offline, patchscope or llm (the auto label's author)")
    explainer_model: str | None
    prompt_version: str
    evidence: dict[str, Any] = Field(description="The windows it was explained from")
    created_at: datetime
    scores: list[ScoreOut]
    headline: float | None = Field(
        None,
        description="The mean of its scores (all in [0, 1]); of a feature's auto labels "
        "the one with the highest is its label, unless a person labelled it",
    )


class FeatureDetail(FeatureActivity):
    histogram: Histogram | None
    examples: list[FeatureExample] = Field(
        description="Top examples by rank, then quantile samples by rank"
    )
    projection: Projection
    effects: TokenEffectsOut = Field(
        default_factory=TokenEffectsOut,
        description="Effect on the next token: measured (shown first) and de-biased "
        "projection; `projection` is the raw direct path",
    )
    label: LabelOut | None = Field(
        description="Newest human label, else the best-scored auto label, else null"
    )
    explanations: list[ExplanationOut] = Field(
        default_factory=list, description="Automatic explanations, newest first, with scores"
    )


class TokenMatchOut(FeatureStats):
    token: str = Field(description="The spelling found in the projection, e.g. 'Ġcat'")
    token_id: int
    rank: int = Field(description="Its position in the feature's top or bottom list")
    value: float
    label: str | None


class TokenMatchPage(Page[TokenMatchOut]):
    pass


class PhraseMatchOut(FeatureStats):
    rank: int = Field(description="The matching example's rank among the feature's top examples")
    activation: float = Field(description="The feature's activation at the example's focus")
    tokens: list[str] = Field(description="The example's window, token by token")
    focus: int = Field(description="Index of the focus token in `tokens`")
    label: str | None


class PhraseMatchPage(Page[PhraseMatchOut]):
    pass


class LabelCreate(BaseModel):
    """A new label. Its author is always the API key's name (there is no author field)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description=f"1 to {MAX_LABEL_CHARS} characters, not blank")
    source: Literal["human", "auto"] = Field(
        default="human", description='"auto" needs a key with the "explain" scope'
    )
    # The scale of every explanation score (docs/ARCHITECTURE.md): 1e308 would outrank
    # every real label forever.
    score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="How well an auto label scored, in [0, 1] like every explanation score; "
        'needs a key with the "explain" scope',
    )

    @field_validator("text")
    @classmethod
    def _text_storable(cls, value: str) -> str:
        problem = text_problem(value)
        if problem:
            raise ValueError(problem)
        return value.strip()


class LabelHistory(Page[LabelOut]):
    items: list[LabelOut] = Field(description="Labels, newest first, one page")
    current: LabelOut | None
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null at end"
    )


class VoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vote: Literal["up", "down"] = Field(description="One vote per key; voting again replaces it")


class LabelMatchOut(FeatureStats):
    label: LabelOut = Field(description="The feature's newest label that matched the query")


class LabelMatchPage(Page[LabelMatchOut]):
    pass


class NeighbourOut(FeatureRef):
    rank: int = Field(description="0 = most similar")
    cosine: float = Field(description="Cosine similarity of the two decoder rows")
    density: float
    label: str | None


class NeighbourList(BaseModel):
    items: list[NeighbourOut] = Field(description="Nearest first (at most 100, not paged)")


class TextQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, description="Text to run through the model and the SAE")
    top_n: int = Field(default=5, ge=1, le=50, description="Features per token")


class ActiveFeature(BaseModel):
    index: int
    activation: float
    label: str | None = Field(None, description="Text of the feature's current label, if any")
    artifact: str | None = Field(None, description="Why it is flagged as an artifact, if it is")


class TokenActivations(BaseModel):
    position: int
    token_id: int
    token: str
    features: list[ActiveFeature] = Field(description="Strongest first; only active ones")
    excluded: bool = Field(
        False, description="Position 0 or a massive-norm token: the SAE never trained on it, "
        "so no features are reported")  # fmt: skip


class TextActivations(BaseModel):
    sae_id: str
    hook: str
    tokens: list[TokenActivations]


Problem.model_rebuild()
