"""The catalog's tables as SQLAlchemy 2 typed ORM classes.

Portable between SQLite and PostgreSQL: JSON columns use the generic `JSON` type, times
are timezone-aware UTC, and every constraint has a fixed name (the naming convention) so
Alembic batch migrations on SQLite can find it again. Any change here needs an Alembic
revision in `migrations/versions/`; `tests/catalog` checks the two agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from saefeat.storage.catalog.job_status import JobStatus

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EXAMPLE_KINDS = ("top", "quantile")
VOCAB_SIDES = ("top", "bottom")
EFFECT_METHODS = ("measured", "debiased")
EFFECT_SIDES = ("up", "down")
LABEL_SOURCES = ("human", "auto")
API_SCOPES = ("read", "label", "jobs", "explain", "admin")
VOTE_VALUES = (-1, 1)


# A column of a row that belongs to a feature, deleted with it (re-indexing replaces them).
FeatureKey = Annotated[int, mapped_column(ForeignKey("features.id", ondelete="CASCADE"))]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out; SQLite forgets the zone, so re-attach it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def _check_in(column: str, values: tuple[str, ...]) -> str:
    allowed = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({allowed})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class LanguageModelRow(Base):
    """One model at one revision, keyed by (name, revision): two revisions of a name have
    different weights, so their activation sets are sets of different models."""

    __tablename__ = "language_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    # The harvest spec's revision (branch, tag or commit); NULL: the default, unnamed.
    revision: Mapped[str | None] = mapped_column(String(100))
    d_model: Mapped[int]
    n_layers: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("name", "revision"),
        # A UNIQUE constraint takes NULLs as distinct, so it alone would allow many rows
        # of (name, NULL); this partial index keeps the default revision one row too
        # (revision 0011).
        Index(
            "uq_language_models_name_default_revision",
            "name",
            unique=True,
            sqlite_where=text("revision IS NULL"),
            postgresql_where=text("revision IS NULL"),
        ),
    )


class Job(Base):
    """A unit of long work. The row is the truth; the runner only reports into it."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(50))
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    spec_hash: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    progress_done: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int | None]
    rate: Mapped[float | None]  # units of progress per second
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    # The runner that claimed it last, and until when its claim holds while `running`
    # (revision 0004): past that, the runner is taken for dead and the job is free again.
    owner: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[datetime | None]
    # Each claim of the job, oldest first (revision 0005): {"owner", "started", "ended",
    # "why"}; a job picked up again too often fails with this history.
    attempts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(_check_in("status", tuple(JobStatus)), name="status"),
        Index(None, "status", "created_at"),
    )


class ActivationSetRow(Base):
    """One Zarr group of harvested activations; the id is the hash of its spec."""

    __tablename__ = "activation_sets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("language_models.id"))
    hook_names: Mapped[list[Any]]
    ctx_len: Mapped[int]
    n_contexts: Mapped[int] = mapped_column(default=0)
    n_tokens: Mapped[int] = mapped_column(default=0)
    dtype: Mapped[str] = mapped_column(String(20))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))  # the Zarr set's status when recorded
    stats: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[LanguageModelRow] = relationship()
    shards: Mapped[list[ActivationShard]] = relationship(
        back_populates="activation_set",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="ActivationShard.shard_index",
    )


class ActivationShard(Base):
    """The catalog's copy of one shard's commit record. Readers trust the commit files in
    the Zarr group (storage/activations.py), not this row; it lists the set's shards."""

    __tablename__ = "activation_shards"

    set_id: Mapped[str] = mapped_column(
        ForeignKey("activation_sets.id", ondelete="CASCADE"), primary_key=True
    )
    shard_index: Mapped[int] = mapped_column(primary_key=True)
    rows: Mapped[int]
    checksum: Mapped[str] = mapped_column(Text)  # per-hook digests can be long
    committed_at: Mapped[datetime] = mapped_column(default=utcnow)

    activation_set: Mapped[ActivationSetRow] = relationship(back_populates="shards")


class SAE(Base):
    __tablename__ = "saes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    # SET NULL: deleting harvested activations must not delete a trained SAE.
    activation_set_id: Mapped[str | None] = mapped_column(
        ForeignKey("activation_sets.id", ondelete="SET NULL")
    )
    model_name: Mapped[str] = mapped_column(String(300))
    hook_name: Mapped[str] = mapped_column(String(200))  # the hook its encoder reads
    # A transcoder's: the hook its decoder writes (migration 0015); NULL for an SAE.
    hook_out_name: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(50))
    d_in: Mapped[int]
    d_sae: Mapped[int]
    k: Mapped[int | None]
    cfg: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # SAEBench's core record (migration 0007); deferred: listings never load it.
    core_eval: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    features: Mapped[list[Feature]] = relationship(
        back_populates="sae", cascade="all, delete-orphan", passive_deletes=True
    )


class Feature(Base):
    """One SAE latent. Rows keep their id across re-indexing so labels stay attached."""

    __tablename__ = "features"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    sae_id: Mapped[str] = mapped_column(ForeignKey("saes.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column("index")
    density: Mapped[float]
    max_activation: Mapped[float]
    mean_activation: Mapped[float]
    histogram: Mapped[dict[str, Any] | None]  # {"edges": [...], "counts": [...]}
    # Why it is an artifact (fixed positions, after special tokens); NULL: it is not.
    artifact: Mapped[str | None] = mapped_column(String(80))
    umap_x: Mapped[float | None]  # its place on the SAE's map of decoder directions
    umap_y: Mapped[float | None]
    # A crosscoder's (migration 0016): decoder norm per source; with two sources the
    # relative norm and its class, a_only / shared / b_only (saefeat/sae/crosscoder.py).
    decoder_norms: Mapped[list[Any] | None]
    relative_norm: Mapped[float | None]
    sharing: Mapped[str | None] = mapped_column(String(16))

    sae: Mapped[SAE] = relationship(back_populates="features")

    __table_args__ = (
        UniqueConstraint("sae_id", "index"),
        Index(None, "sae_id", "density"),
        Index(None, "sae_id", "max_activation"),
        Index(None, "sae_id", "sharing", "relative_norm"),
    )


class FeatureExampleRow(Base):
    __tablename__ = "feature_examples"

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[FeatureKey]
    kind: Mapped[str] = mapped_column(String(20))
    rank: Mapped[int]
    activation: Mapped[float]
    context_index: Mapped[int]
    position: Mapped[int]
    focus: Mapped[int]
    token_ids: Mapped[list[Any]]
    token_strs: Mapped[list[Any]]
    values: Mapped[list[Any]] = mapped_column("values")

    __table_args__ = (
        CheckConstraint(_check_in("kind", EXAMPLE_KINDS), name="kind"),
        Index(None, "feature_id", "kind", "rank"),
    )


class RankedToken:
    """What an entry of a feature's ranked token list (vocabulary projection, effect)
    holds: the token and its value. Each table declares its own key (feature, list, rank);
    a mixin's columns come after the class's own, so the key stays first."""

    token_id: Mapped[int]
    token_str: Mapped[str] = mapped_column(String(200))
    value: Mapped[float]


class VocabToken(RankedToken, Base):
    """One entry of a feature's vocabulary projection (decoder row through the unembedding)."""

    __tablename__ = "vocab_tokens"

    feature_id: Mapped[FeatureKey] = mapped_column(primary_key=True)
    side: Mapped[str] = mapped_column(String(10), primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)

    __table_args__ = (
        CheckConstraint(_check_in("side", VOCAB_SIDES), name="side"),
        # Search is "which features have this token on this side, strongest first": one
        # spelling's entries in value order, read until a page is full (revision 0003).
        Index(None, "token_str", "side", "value", "feature_id"),
    )


class TokenEffect(RankedToken, Base):
    """One token of a feature's effect on the next token (revision 0013): `measured`, the
    drop in its probability when the feature is removed where it fires, or
    `debiased`, the direct projection against each token's baseline over all features."""

    __tablename__ = "token_effects"

    feature_id: Mapped[FeatureKey] = mapped_column(primary_key=True)
    method: Mapped[str] = mapped_column(String(10), primary_key=True)
    side: Mapped[str] = mapped_column(String(4), primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)

    __table_args__ = (
        CheckConstraint(_check_in("method", EFFECT_METHODS), name="method"),
        CheckConstraint(_check_in("side", EFFECT_SIDES), name="side"),
        Index(None, "token_str", "method", "side", "value", "feature_id"),
    )


class FiredToken(Base):
    """A token a feature fires on, by its share of the activation mass in the feature's
    top examples (revision 0013)."""

    __tablename__ = "fired_tokens"

    feature_id: Mapped[FeatureKey] = mapped_column(primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)
    token_str: Mapped[str] = mapped_column(String(200))
    share: Mapped[float]

    __table_args__ = (Index(None, "token_str", "share", "feature_id"),)


class Neighbour(Base):
    __tablename__ = "neighbours"

    feature_id: Mapped[FeatureKey] = mapped_column(primary_key=True)
    rank: Mapped[int] = mapped_column(primary_key=True)
    neighbour_feature_id: Mapped[FeatureKey]
    cosine: Mapped[float]


class Label(Base):
    """A description of a feature. Never updated: a new opinion is a new row."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[FeatureKey] = mapped_column(index=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(10))
    author: Mapped[str | None] = mapped_column(String(200))
    score: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint(_check_in("source", LABEL_SOURCES), name="source"),)


class LabelVote(Base):
    """One voter's up (+1) or down (-1) vote on a label; voting again replaces it.

    The voter is the API key's name. Full-text search over labels lives beside this in
    revision 0002 (FTS5 table `labels_fts` on SQLite, a generated tsvector column on
    PostgreSQL); neither is mapped here because each exists on one database only.
    """

    __tablename__ = "label_votes"

    label_id: Mapped[int] = mapped_column(
        ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True
    )
    voter: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (CheckConstraint("value IN (-1, 1)", name="value"),)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex
    prefix: Mapped[str] = mapped_column(String(8))  # shown to people to tell keys apart
    scopes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


# ---- automatic explanations (issue 13, revision 0008) ----------------------------------


class Explanation(Base):
    """How an auto label was made: the explainer, its model and prompt version, and the
    example windows it saw. One row per auto label an explain job wrote; a resubmitted
    job skips features that already have one from the same explainer and prompt."""

    __tablename__ = "explanations"

    label_id: Mapped[int] = mapped_column(
        ForeignKey("labels.id", ondelete="CASCADE"), primary_key=True
    )
    feature_id: Mapped[FeatureKey]
    explainer: Mapped[str] = mapped_column(String(50))
    explainer_model: Mapped[str | None] = mapped_column(String(200))
    prompt_version: Mapped[str] = mapped_column(String(50))
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index(None, "feature_id", "explainer", "prompt_version"),)


class ExplanationScore(Base):
    """One scorer's verdict on one explanation (a label): detection, fuzzing, embedding or
    activation, with how many windows it rests on and what it was scored on."""

    __tablename__ = "explanation_scores"

    id: Mapped[int] = mapped_column(primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(30))
    value: Mapped[float]
    n: Mapped[int]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    explainer_model: Mapped[str | None] = mapped_column(String(200))
    scorer_model: Mapped[str | None] = mapped_column(String(200))
    prompt_version: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("label_id", "type"),
        # Label search sorted or filtered by one score type.
        Index(None, "type", "value"),
    )
