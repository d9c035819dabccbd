"""Job rows in the catalog. For now the read `saefeat jobs` needs; the job runner's own
writes are still in workers/jobs.py (to move here, issue 16)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.storage.catalog.models import Job


def list_jobs(session: Session, limit: int) -> list[Job]:
    """The newest `limit` jobs, newest first."""
    return list(session.scalars(select(Job).order_by(Job.created_at.desc()).limit(limit)))
