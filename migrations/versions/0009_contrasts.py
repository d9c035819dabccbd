"""Contrast runs and their per-feature statistics.

A contrast ranks an SAE's features by how differently they fire on two activation sets
(saefeat/analysis/contrast.py); its id is its spec's hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATS = (
    "token_rate_a", "token_rate_b", "doc_rate_a", "doc_rate_b", "window_rate_a",
    "window_rate_b", "mean_act_a", "mean_act_b", "mean_act_diff", "log_ratio", "z", "p", "q",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "contrasts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("sae_id", sa.String(64), nullable=False),
        sa.Column("set_a", sa.String(64), nullable=False),
        sa.Column("set_b", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        *(
            sa.Column(c, sa.Integer(), nullable=False)
            for c in (
                "n_tokens_a",
                "n_tokens_b",
                "n_docs_a",
                "n_docs_b",
                "n_window_docs_a",
                "n_window_docs_b",
                "n_significant_a",
                "n_significant_b",
            )  # fmt: skip
        ),
        sa.Column("auroc", sa.Float(), nullable=True),
        sa.Column("classifier_features", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["sae_id"], ["saes.id"], name="fk_contrasts_sae_id_saes", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_contrasts"),
    )
    op.create_index("ix_contrasts_sae_id", "contrasts", ["sae_id"])
    op.create_table(
        "contrast_features",
        sa.Column("contrast_id", sa.String(64), nullable=False),
        sa.Column("feature_index", sa.Integer(), nullable=False),
        sa.Column("side", sa.String(1), nullable=False),
        *(sa.Column(c, sa.Float(), nullable=False) for c in STATS),
        sa.Column("fisher", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contrast_id"],
            ["contrasts.id"],
            name="fk_contrast_features_contrast_id_contrasts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("contrast_id", "feature_index", name="pk_contrast_features"),
    )
    op.create_index(
        "ix_contrast_features_contrast_id_side_log_ratio",
        "contrast_features",
        ["contrast_id", "side", "log_ratio"],
    )


def downgrade() -> None:
    op.drop_table("contrast_features")
    op.drop_table("contrasts")
