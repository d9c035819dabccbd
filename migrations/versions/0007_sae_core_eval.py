"""An SAE's SAEBench `core` evaluation record.

The record (one entry per latent among its details) is served whole by
GET /v1/saes/{id}/evals/core; it is a column of its own so the SAE listings, which carry
the row's metrics, stay small.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("saes", sa.Column("core_eval", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("saes") as batch:
        batch.drop_column("core_eval")
