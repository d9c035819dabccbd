"""Language models keyed by (name, revision), the default revision (NULL) included.

0001's UNIQUE (name, revision) lets any number of (name, NULL) rows in, since a UNIQUE
constraint takes NULLs as distinct on SQLite and PostgreSQL alike; a partial unique index
over `name` where `revision IS NULL` closes that. Rows already here keep their revision
(NULL where the set named none); any duplicate (name, NULL) rows are merged into the
oldest first, their activation sets moved onto it.

Before this revision the catalog found a set's model row by name only, so a set harvested
at a second revision of a name was linked to the first revision's row; recording the set
again (`set_registry.record_activation_set`) links it to its own (name, revision) row.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "uq_language_models_name_default_revision"
DEFAULT = sa.text("revision IS NULL")


def upgrade() -> None:
    op.execute(
        "UPDATE activation_sets SET model_id = ("
        " SELECT MIN(keep.id) FROM language_models keep JOIN language_models m"
        " ON keep.name = m.name WHERE m.id = activation_sets.model_id"
        " AND keep.revision IS NULL)"
        " WHERE model_id IN (SELECT id FROM language_models WHERE revision IS NULL)"
    )
    op.execute(
        "DELETE FROM language_models WHERE revision IS NULL AND id NOT IN"
        " (SELECT MIN(id) FROM language_models WHERE revision IS NULL GROUP BY name)"
    )
    op.create_index(
        INDEX, "language_models", ["name"], unique=True,
        sqlite_where=DEFAULT, postgresql_where=DEFAULT,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index(INDEX, table_name="language_models")
