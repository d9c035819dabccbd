"""Automatic explanations and their scores.

An explain job writes each explanation as an auto label; `explanations` records how it
was made (explainer, model, prompt version, the windows it saw) and `explanation_scores`
holds one row per scorer (detection, fuzzing, embedding, activation).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "explanations",
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("explainer", sa.String(50), nullable=False),
        sa.Column("explainer_model", sa.String(200), nullable=True),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["label_id"], ["labels.id"],
            name="fk_explanations_label_id_labels", ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["features.id"],
            name="fk_explanations_feature_id_features", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("label_id", name="pk_explanations"),
    )  # fmt: skip
    op.create_index(
        "ix_explanations_feature_id_explainer_prompt_version",
        "explanations",
        ["feature_id", "explainer", "prompt_version"],
    )
    op.create_table(
        "explanation_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(30), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("explainer_model", sa.String(200), nullable=True),
        sa.Column("scorer_model", sa.String(200), nullable=True),
        sa.Column("prompt_version", sa.String(50), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["label_id"], ["labels.id"],
            name="fk_explanation_scores_label_id_labels", ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_explanation_scores"),
        sa.UniqueConstraint("label_id", "type", name="uq_explanation_scores_label_id_type"),
    )  # fmt: skip
    op.create_index("ix_explanation_scores_type_value", "explanation_scores", ["type", "value"])


def downgrade() -> None:
    op.drop_index("ix_explanation_scores_type_value", table_name="explanation_scores")
    op.drop_table("explanation_scores")
    op.drop_index("ix_explanations_feature_id_explainer_prompt_version", table_name="explanations")
    op.drop_table("explanations")
