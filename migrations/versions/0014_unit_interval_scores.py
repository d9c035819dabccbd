"""Scores on one scale (issue 21): the activation score becomes an AUROC in [0, 1], and an
auto label's headline score becomes the mean of its scores.

The activation score stored before this revision was the feature's mean activation on
the windows its explanation retrieves, in standard deviations above the pool's mean
(-0.34 to 5.13 on the demo). It cannot be turned into the AUROC from what was kept (the
AUROC needs the activations of every pool window), so those rows are marked stale, not
rescaled: their type becomes `activation_sd`, which no headline, search or check of
[0, 1] reads, and the page shows it as stale. A rerun of `saefeat explain` scores anew.

Each auto label with an explanation then gets the new headline score (explanations.
headline_score): the mean of its detection, fuzzing and embedding scores (all in [0, 1],
0.5 = chance), NULL when it has none. The rule is written out here, not imported, so this
revision means the same thing forever.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCORES = sa.table("explanation_scores", sa.column("label_id", sa.Integer),
                  sa.column("type", sa.String), sa.column("value", sa.Float))  # fmt: skip
LABELS = sa.table("labels", sa.column("id", sa.Integer), sa.column("score", sa.Float))
EXPLANATIONS = sa.table("explanations", sa.column("label_id", sa.Integer))


def _rename(old: str, new: str) -> None:
    op.execute(SCORES.update().where(SCORES.c.type == old).values(type=new))


def _headline(value) -> None:
    """Set each explained label's score to `value` (a scalar subquery over its scores)."""
    explained = sa.select(EXPLANATIONS.c.label_id)
    op.execute(LABELS.update().where(LABELS.c.id.in_(explained)).values(score=value))


def _of_label():
    return SCORES.c.label_id == LABELS.c.id


def upgrade() -> None:
    _rename("activation", "activation_sd")
    unit = ("detection", "fuzzing", "embedding")
    mean = (
        sa.select(sa.func.avg(SCORES.c.value))
        .where(_of_label(), SCORES.c.type.in_(unit))
        .scalar_subquery()
    )
    _headline(mean)


def downgrade() -> None:
    """The earlier rule: the first of detection, embedding, fuzzing the label has. New
    AUROC activation rows stay `activation`, beside the renamed-back old ones."""
    _rename("activation_sd", "activation")
    rank = sa.case((SCORES.c.type == "detection", 0), (SCORES.c.type == "embedding", 1),
                   else_=2)  # fmt: skip
    first = (
        sa.select(SCORES.c.value)
        .where(_of_label(), SCORES.c.type.in_(("detection", "embedding", "fuzzing")))
        .order_by(rank)
        .limit(1)
        .scalar_subquery()
    )
    _headline(first)
