"""What makes a feature readable: its measured and de-biased effect on the next token,
the tokens it fires on, its artifact flag and its place on the SAE's map.

- `token_effects`: per feature, tokens ranked by `method`: `measured` (the drop in
  log-probability when the feature's contribution is removed where it fires; "TokenChange",
  Gur-Arieh et al. 2025) or `debiased` (the direct vocabulary projection ranked against
  each token's baseline over all features), each on `side` up (made more likely) or down.
- `fired_tokens`: the tokens a feature fires on, by their share of its activation mass in
  its top examples (search by what a feature reads, not only by what it writes).
- `features.artifact`: why a feature is an artifact (fires at fixed positions or right
  after special tokens), NULL for a feature that is not; `umap_x`, `umap_y`: its place on
  the SAE's UMAP of decoder directions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _feature_fk(table: str) -> sa.ForeignKeyConstraint:
    name = f"fk_{table}_feature_id_features"
    return sa.ForeignKeyConstraint(["feature_id"], ["features.id"], name=name, ondelete="CASCADE")


def upgrade() -> None:
    with op.batch_alter_table("features") as batch:
        batch.add_column(sa.Column("artifact", sa.String(80), nullable=True))
        batch.add_column(sa.Column("umap_x", sa.Double(), nullable=True))
        batch.add_column(sa.Column("umap_y", sa.Double(), nullable=True))
    op.create_table(
        "token_effects",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(10), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("token_str", sa.String(200), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.CheckConstraint("method IN ('measured', 'debiased')", name="ck_token_effects_method"),
        sa.CheckConstraint("side IN ('up', 'down')", name="ck_token_effects_side"),
        _feature_fk("token_effects"),
        sa.PrimaryKeyConstraint("feature_id", "method", "side", "rank", name="pk_token_effects"),
    )
    op.create_index("ix_token_effects_token_str_method_side_value_feature_id", "token_effects",
                    ["token_str", "method", "side", "value", "feature_id"])  # fmt: skip
    op.create_table(
        "fired_tokens",
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("token_str", sa.String(200), nullable=False),
        sa.Column("share", sa.Double(), nullable=False),
        _feature_fk("fired_tokens"),
        sa.PrimaryKeyConstraint("feature_id", "rank", name="pk_fired_tokens"),
    )
    op.create_index("ix_fired_tokens_token_str_share_feature_id", "fired_tokens",
                    ["token_str", "share", "feature_id"])  # fmt: skip


def downgrade() -> None:
    op.drop_table("fired_tokens")
    op.drop_table("token_effects")
    with op.batch_alter_table("features") as batch:
        batch.drop_column("umap_y")
        batch.drop_column("umap_x")
        batch.drop_column("artifact")
