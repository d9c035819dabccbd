"""Label votes and full-text search over labels.

SQLite: an external-content FTS5 table `labels_fts` over labels.text, kept in sync by
triggers (labels are append-only, but deletes cascade from features). PostgreSQL: a
generated `text_tsv` tsvector column with a GIN index; the database keeps it current.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE labels_fts USING fts5("
    "text, content='labels', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER labels_fts_insert AFTER INSERT ON labels BEGIN "
    "INSERT INTO labels_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER labels_fts_delete AFTER DELETE ON labels BEGIN "
    "INSERT INTO labels_fts(labels_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER labels_fts_update AFTER UPDATE OF text ON labels BEGIN "
    "INSERT INTO labels_fts(labels_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO labels_fts(rowid, text) VALUES (new.id, new.text); END",
    # Labels written before this revision.
    "INSERT INTO labels_fts(labels_fts) VALUES ('rebuild')",
]
SQLITE_FTS_DROP = [
    "DROP TRIGGER IF EXISTS labels_fts_update",
    "DROP TRIGGER IF EXISTS labels_fts_delete",
    "DROP TRIGGER IF EXISTS labels_fts_insert",
    "DROP TABLE IF EXISTS labels_fts",
]
POSTGRES_FTS = [
    "ALTER TABLE labels ADD COLUMN text_tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX ix_labels_text_tsv ON labels USING gin (text_tsv)",
]
POSTGRES_FTS_DROP = [
    "DROP INDEX IF EXISTS ix_labels_text_tsv",
    "ALTER TABLE labels DROP COLUMN IF EXISTS text_tsv",
]


def _fts(sqlite: list[str], postgres: list[str]) -> None:
    statements = sqlite if op.get_bind().dialect.name == "sqlite" else postgres
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "label_votes",
        sa.Column("label_id", sa.Integer(), nullable=False),
        sa.Column("voter", sa.String(length=200), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("value IN (-1, 1)", name=op.f("ck_label_votes_value")),
        sa.ForeignKeyConstraint(
            ["label_id"],
            ["labels.id"],
            name=op.f("fk_label_votes_label_id_labels"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("label_id", "voter", name=op.f("pk_label_votes")),
    )
    _fts(SQLITE_FTS, POSTGRES_FTS)


def downgrade() -> None:
    _fts(SQLITE_FTS_DROP, POSTGRES_FTS_DROP)
    op.drop_table("label_votes")
