"""A crosscoder's latents (issue 24): each one's decoder norm per source, and with two
sources its relative norm ||d_B|| / (||d_A|| + ||d_B||) and the class that cuts it
(a_only / shared / b_only; saefeat/sae/crosscoder.py holds the threshold). NULL for the
latents of an SAE or a transcoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("features", sa.Column("decoder_norms", sa.JSON(), nullable=True))
    op.add_column("features", sa.Column("relative_norm", sa.Double(), nullable=True))
    op.add_column("features", sa.Column("sharing", sa.String(16), nullable=True))
    op.create_index("ix_features_sae_id_sharing_relative_norm", "features",
                    ["sae_id", "sharing", "relative_norm"])  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_features_sae_id_sharing_relative_norm", table_name="features")
    with op.batch_alter_table("features") as batch:
        batch.drop_column("sharing")
        batch.drop_column("relative_norm")
        batch.drop_column("decoder_norms")
