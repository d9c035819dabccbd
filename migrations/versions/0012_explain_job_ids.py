"""Explain jobs' spec hashes under the one content-id rule (saefeat/specs/base.py).

Before, an explain job's hash was sha256 of its whole spec as pydantic's compact JSON,
`batch_features` (how many features a Ray task takes) included; now it is the rule every
spec follows: sorted JSON of the fields that name the work (ExplainSpec.ID_FIELDS), so
resubmitting with another batch size joins the same job. This rewrites the rows already
here, so a resubmit after the upgrade still joins a job from before it. The recipe is
written out (not imported) so this revision means the same thing forever.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_FIELDS = ("sae", "features", "explainer", "scorers", "n_explain", "pool_contexts", "seed")
JOBS = sa.table("jobs", sa.column("id", sa.String), sa.column("kind", sa.String),
                sa.column("spec", sa.JSON), sa.column("spec_hash", sa.String))  # fmt: skip


def explain_id(spec: dict) -> str:
    data = {k: spec[k] for k in ID_FIELDS if k in spec}
    blob = json.dumps(data, sort_keys=True)
    return "ex-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def legacy_explain_id(spec: dict) -> str:
    """pydantic's model_dump_json of the spec: fields in declaration order, compact."""
    order = ("features", "explainer", "scorers", "n_explain", "pool_contexts",
             "batch_features", "seed", "sae")  # fmt: skip
    data = {k: spec[k] for k in order if k in spec}
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return "ex-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rehash(new_id) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(JOBS.c.id, JOBS.c.spec).where(JOBS.c.kind == "explain"))
    for job_id, spec in rows.fetchall():
        if isinstance(spec, str):  # a driver that hands JSON back as text
            spec = json.loads(spec)
        bind.execute(JOBS.update().where(JOBS.c.id == job_id).values(spec_hash=new_id(spec)))


def upgrade() -> None:
    _rehash(explain_id)


def downgrade() -> None:
    _rehash(legacy_explain_id)
