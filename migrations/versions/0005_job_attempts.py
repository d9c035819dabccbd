"""Job attempts: the history of a job's claims and how each ended.

A job picked up again after its runner stopped (shutdown, crash) more than
`max_job_resumes` times fails with this history instead of running again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("attempts", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "attempts")
