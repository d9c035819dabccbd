"""Initial catalog schema: models, corpora, jobs, activations, SAEs, features, labels, keys.

Written out in full (not importing saefeat's models) so this revision keeps meaning the
same schema however the models change later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _fk(table: str, column: str, target: str, ondelete: str | None = None) -> sa.Constraint:
    referred = target.split(".")[0]
    return sa.ForeignKeyConstraint(
        [column], [target], name=op.f(f"fk_{table}_{column}_{referred}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=8), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _time("created_at"),
        _time("revoked_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    op.create_table(
        "corpora",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_corpora")),
        sa.UniqueConstraint("name", name=op.f("uq_corpora_name")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("rate", sa.Double(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        _time("created_at"),
        _time("updated_at"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    op.create_index(op.f("ix_jobs_spec_hash"), "jobs", ["spec_hash"])
    op.create_index(op.f("ix_jobs_status_created_at"), "jobs", ["status", "created_at"])
    op.create_table(
        "language_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("revision", sa.String(length=100), nullable=True),
        sa.Column("d_model", sa.Integer(), nullable=False),
        sa.Column("n_layers", sa.Integer(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_language_models")),
        sa.UniqueConstraint("name", "revision", name=op.f("uq_language_models_name_revision")),
    )
    op.create_table(
        "activation_sets",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("hook_names", sa.JSON(), nullable=False),
        sa.Column("ctx_len", sa.Integer(), nullable=False),
        sa.Column("n_contexts", sa.Integer(), nullable=False),
        sa.Column("n_tokens", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(length=20), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=True),
        _time("created_at"),
        _fk("activation_sets", "model_id", "language_models.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_activation_sets")),
    )
    op.create_table(
        "activation_shards",
        sa.Column("set_id", sa.String(length=64), nullable=False),
        sa.Column("shard_index", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("checksum", sa.Text(), nullable=False),
        _time("committed_at"),
        _fk("activation_shards", "set_id", "activation_sets.id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("set_id", "shard_index", name=op.f("pk_activation_shards")),
    )
    op.create_table(
        "saes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("activation_set_id", sa.String(length=64), nullable=True),
        sa.Column("model_name", sa.String(length=300), nullable=False),
        sa.Column("hook_name", sa.String(length=200), nullable=False),
        sa.Column("architecture", sa.String(length=50), nullable=False),
        sa.Column("d_in", sa.Integer(), nullable=False),
        sa.Column("d_sae", sa.Integer(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=True),
        sa.Column("cfg", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        _time("created_at"),
        _fk("saes", "activation_set_id", "activation_sets.id", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saes")),
    )
    op.create_table(
        "features",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sae_id", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("density", sa.Double(), nullable=False),
        sa.Column("max_activation", sa.Double(), nullable=False),
        sa.Column("mean_activation", sa.Double(), nullable=False),
        sa.Column("histogram", sa.JSON(), nullable=True),
        _fk("features", "sae_id", "saes.id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_features")),
        sa.UniqueConstraint("sae_id", "index", name=op.f("uq_features_sae_id_index")),
    )
    op.create_index(op.f("ix_features_sae_id_density"), "features", ["sae_id", "density"])
    op.create_index(
        op.f("ix_features_sae_id_max_activation"), "features", ["sae_id", "max_activation"]
    )
    op.create_table(
        "feature_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("activation", sa.Double(), nullable=False),
        sa.Column("context_index", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("focus", sa.Integer(), nullable=False),
        sa.Column("token_ids", sa.JSON(), nullable=False),
        sa.Column("token_strs", sa.JSON(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.CheckConstraint("kind IN ('top', 'quantile')", name=op.f("ck_feature_examples_kind")),
        _fk("feature_examples", "feature_id", "features.id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature_examples")),
    )
    op.create_index(
        op.f("ix_feature_examples_feature_id_kind_rank"),
        "feature_examples",
        ["feature_id", "kind", "rank"],
    )
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        _time("created_at"),
        sa.CheckConstraint("source IN ('human', 'auto')", name=op.f("ck_labels_source")),
        _fk("labels", "feature_id", "features.id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
    )
    op.create_index(op.f("ix_labels_feature_id"), "labels", ["feature_id"])
    op.create_table(
        "neighbours",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("neighbour_feature_id", sa.Integer(), nullable=False),
        sa.Column("cosine", sa.Double(), nullable=False),
        _fk("neighbours", "feature_id", "features.id", ondelete="CASCADE"),
        _fk("neighbours", "neighbour_feature_id", "features.id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("feature_id", "rank", name=op.f("pk_neighbours")),
    )
    op.create_table(
        "vocab_tokens",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(length=10), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("token_str", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.CheckConstraint("side IN ('top', 'bottom')", name=op.f("ck_vocab_tokens_side")),
        _fk("vocab_tokens", "feature_id", "features.id", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("feature_id", "side", "rank", name=op.f("pk_vocab_tokens")),
    )
    op.create_index(op.f("ix_vocab_tokens_token_str_side"), "vocab_tokens", ["token_str", "side"])


def downgrade() -> None:
    # Children before parents; dropping a table drops its indexes with it.
    for table in (
        "vocab_tokens",
        "neighbours",
        "labels",
        "feature_examples",
        "features",
        "saes",
        "activation_shards",
        "activation_sets",
        "language_models",
        "jobs",
        "corpora",
        "api_keys",
    ):
        op.drop_table(table)
