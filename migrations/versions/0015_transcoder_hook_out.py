"""A transcoder's output hook (issue 24): the hook its decoder writes, beside the one its
encoder reads (`hook_name`). NULL for an SAE, which reconstructs the hook it reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("saes", sa.Column("hook_out_name", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("saes") as batch:
        batch.drop_column("hook_out_name")
