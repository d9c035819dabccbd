"""Job rows in the catalog: every query on the `jobs` table, for the job runner
(workers/jobs.py, which keeps the threads, heartbeats and lease timing) and `saefeat jobs`.

Each function takes an open Session; one that writes commits its own transaction, and a
claim, a cancel of an unclaimed job or a lease renewal is one conditional UPDATE, so two
runners racing for a row cannot both win. Rows come back attached to the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from saefeat.errors import IdempotencyConflict, NotFoundError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.job_status import ACTIVE, JobStatus
from saefeat.storage.catalog.models import Job

CANCEL_REQUESTED = "cancel requested"  # on a running job's row: its runner should stop
LEASE_LOST = "its runner stopped renewing the lease (the process died or hung)"


def get_job(session: Session, job_id: str) -> Job:
    """The job `job_id`, or NotFoundError."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}; list jobs with GET /v1/jobs")
    return job


def list_jobs(
    session: Session, limit: int, cursor: str | None = None
) -> tuple[list[Job], str | None]:
    """A page of jobs, newest first, and the cursor of the next page (None: no more)."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if cursor is not None:
        when, job_id = decode_cursor(cursor, "jobs:newest", (str, str)).key
        after = datetime.fromisoformat(when)
        query = query.where(
            or_(Job.created_at < after, and_(Job.created_at == after, Job.id < job_id))
        )
    jobs = list(session.scalars(query))
    if len(jobs) <= limit:
        return jobs, None
    last = jobs[limit - 1]
    key = (last.created_at.isoformat(), last.id)
    return jobs[:limit], encode_cursor(Cursor("jobs:newest", key))


def latest_job(session: Session, kind: str, spec_hash: str) -> Job | None:
    """The newest job of this kind and spec hash (a pipeline's stage), or None."""
    return session.scalar(select(Job).where(Job.kind == kind, Job.spec_hash == spec_hash)
                          .order_by(Job.created_at.desc()).limit(1))  # fmt: skip


def latest_jobs(session: Session, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Job]:
    """`latest_job` for many (kind, spec hash) pairs in one query: the pairs with a job."""
    wanted = set(keys)
    if not wanted:
        return {}
    rows = session.scalars(select(Job).where(Job.spec_hash.in_({h for _, h in wanted}))
                           .order_by(Job.created_at.desc()))  # fmt: skip
    out: dict[tuple[str, str], Job] = {}
    for job in rows:
        if (job.kind, job.spec_hash) in wanted:
            out.setdefault((job.kind, job.spec_hash), job)
    return out


def update_job(session: Session, job_id: str, **values: Any) -> None:
    """Set `values` on the job's row (nothing if it is gone) and commit."""
    job = session.get(Job, job_id)
    if job is not None:
        for k, v in values.items():
            setattr(job, k, v)
        session.commit()


def submit_job(
    session: Session, kind: str, spec: dict[str, Any], spec_hash: str, idempotency_key: str | None
) -> tuple[Job, bool]:
    """(the job, whether it is new): replay the key's job, join an active one, or insert."""
    if idempotency_key is not None:
        job = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if job is not None:
            if job.kind != kind or job.spec != spec:
                raise IdempotencyConflict(
                    f"Idempotency-Key {idempotency_key!r} was used for job {job.id} "
                    "with a different body; use a new key for a new request",
                    field="Idempotency-Key",
                )
            return job, False
    active = session.scalar(
        select(Job)
        .where(Job.kind == kind, Job.spec_hash == spec_hash, Job.status.in_(ACTIVE))
        .order_by(Job.created_at)
    )
    if active is not None:  # two runs of one work would be two writers of it
        return active, False
    job = Job(
        kind=kind,
        spec=spec,
        spec_hash=spec_hash,
        status=JobStatus.QUEUED,
        idempotency_key=idempotency_key,
    )
    session.add(job)
    session.commit()
    session.refresh(job)
    return job, True


def _claimable(now: datetime):
    """Queued, or running under a lease that ran out (its runner died); a running job
    without a lease predates revision 0004 and is as orphaned."""
    expired = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    return or_(Job.status == JobStatus.QUEUED, and_(Job.status == JobStatus.RUNNING, expired))


def cancel_unclaimed(session: Session, job_id: str, now: datetime) -> bool:
    """Cancel the job in one UPDATE if nobody runs it; False if a runner holds it."""
    stopped = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now))
        .values(status=JobStatus.CANCELLED, error="cancelled before it ran", lease_expires_at=None)
    ).rowcount
    session.commit()
    return bool(stopped)


def claimable_ids(session: Session, kinds: Iterable[str], now: datetime) -> list[str]:
    """Ids of the jobs of these kinds that nobody runs, oldest first."""
    return list(session.scalars(
        select(Job.id).where(Job.kind.in_(list(kinds)), _claimable(now)).order_by(Job.created_at)
    ))  # fmt: skip


def claim_job(session: Session, job_id: str, owner: str, lease_s: float, now: datetime) -> bool:
    """Make the job `owner`'s and running in one UPDATE that matches only while claimable."""
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now))
        .values(
            status=JobStatus.RUNNING,
            owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_s),
            error=None,
            rate=None,
            updated_at=now,
        )
    ).rowcount
    session.commit()
    return bool(claimed)


def begin_attempt(
    session: Session, job_id: str, owner: str, max_resumes: int, now: datetime
) -> bool:
    """Append an attempt (closing a dead one), or fail the job past max_resumes; running?"""
    job = session.get(Job, job_id)
    started = now.isoformat()
    attempts = [dict(a) for a in job.attempts or []]
    if attempts and attempts[-1].get("ended") is None:
        attempts[-1].update(ended=started, why=LEASE_LOST)
    if len(attempts) > max_resumes:
        history = "; ".join(f"{i}. {a['owner']} from {a['started']}: {a['why']}"
                            for i, a in enumerate(attempts, 1))  # fmt: skip
        job.status, job.lease_expires_at = JobStatus.FAILED, None
        job.error = (
            f"picked up again more than {max_resumes} time(s) (SAEFEAT_MAX_JOB_RESUMES) "
            f"without finishing, so it was failed; attempts: {history}"
        )[:4000]
    else:
        attempts.append({"owner": owner, "started": started, "ended": None, "why": None})
    job.attempts = attempts
    session.commit()
    return job.status == JobStatus.RUNNING


def end_attempt(
    session: Session, job_id: str, owner: str, why: str | None, now: datetime, values: dict
) -> None:
    """Write `values` and close `owner`'s open attempt with `why` (None: drop it, it never
    ran); nothing if the job is no longer `owner`'s and running."""
    job = session.get(Job, job_id)
    if job is None or job.owner != owner or job.status != JobStatus.RUNNING:
        return
    attempts = [dict(a) for a in job.attempts or []]
    if attempts and attempts[-1]["owner"] == owner and not attempts[-1]["ended"]:
        if why is None:
            attempts.pop()
        else:
            attempts[-1].update(ended=now.isoformat(), why=why)
        job.attempts = attempts
    for k, v in values.items():
        setattr(job, k, v)
    session.commit()


def renew_leases(
    session: Session, owner: str, lease_s: float, now: datetime
) -> tuple[int, list[str]]:
    """Extend `owner`'s running leases in one UPDATE; (how many, ids with a cancel request)."""
    ours = and_(Job.owner == owner, Job.status == JobStatus.RUNNING)
    renewed = session.execute(
        update(Job).where(ours).values(lease_expires_at=now + timedelta(seconds=lease_s))
    ).rowcount
    asked = list(session.scalars(select(Job.id).where(ours, Job.error == CANCEL_REQUESTED)))
    session.commit()
    return renewed, asked


def running_ids(session: Session, owner: str) -> list[str]:
    """Ids of the jobs `owner` is running."""
    return list(
        session.scalars(select(Job.id).where(Job.owner == owner, Job.status == JobStatus.RUNNING))
    )
