"""Job leases: which runner holds a running job, and until when.

A runner claims a job by writing its owner id and a lease expiry in the same UPDATE that
moves the job to `running`, and renews the lease while it works. A running job whose
lease has run out belonged to a process that died; any runner may claim it again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("owner", sa.String(100), nullable=True))
    op.add_column("jobs", sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "lease_expires_at")
    op.drop_column("jobs", "owner")
