"""Token search reads each spelling's strongest features straight off an index.

The index on vocab_tokens (token_str, side) becomes (token_str, side, value, feature_id):
search_by_token scans one spelling's entries in value order and stops after a page,
instead of reading and sorting every entry of the spelling (hundreds at 1M features).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD, NEW = "ix_vocab_tokens_token_str_side", "ix_vocab_tokens_token_str_side_value_feature_id"


def upgrade() -> None:
    op.create_index(NEW, "vocab_tokens", ["token_str", "side", "value", "feature_id"])
    op.drop_index(OLD, table_name="vocab_tokens")


def downgrade() -> None:
    op.create_index(OLD, "vocab_tokens", ["token_str", "side"])
    op.drop_index(NEW, table_name="vocab_tokens")
