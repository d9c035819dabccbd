"""The job runner: a harvest job row in SQL is the truth; a thread here drives the Ray work.

Life of a job: `submit` writes a `queued` row (or replays the row of the same
Idempotency-Key, or joins the active job of the same activation set); `start` runs it in
a background thread of this process, which moves it to `running`, writes progress
(tokens done/total, tokens/s) as shards commit, and ends it `succeeded`, `failed` (error
text set; a harvest that had to skip shards fails and names them) or `cancelled`.
`cancel` sets a flag the harvest polls between shards; in-flight Ray work is dropped,
committed shards stay valid, and resubmitting the spec resumes.

Several processes may run jobs (`saefeat serve --workers N`, the CLI): a runner claims a
job with one conditional UPDATE (queued, or running under a lease that has run out) that
writes its owner id and a lease expiry, and a heartbeat renews the leases of the jobs it
runs. So each job runs in one place, and a job whose process died (its lease runs out)
is picked up by `resume_pending`, which the API calls on start and then every LEASE_S.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from saefeat.config import Settings
from saefeat.errors import NotFoundError, SaefeatError
from saefeat.specs import HarvestSpec
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.models import Job, utcnow
from saefeat.workers.harvest import HarvestBusy, HarvestCancelled, HarvestResult

log = logging.getLogger(__name__)
HARVEST = "harvest"
ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
PROGRESS_EVERY_S = 0.5  # at most this often a progress write to the catalog
LEASE_S = 60.0  # a running job's claim holds this long unless its runner renews it
HEARTBEAT_S = LEASE_S / 4  # how often a runner renews its leases
CANCEL_REQUESTED = "cancel requested"  # on a running job's row: its runner should stop


class IdempotencyConflict(SaefeatError):
    """The Idempotency-Key was used before with another body."""


class JobFinished(SaefeatError):
    status_code = 409


def _spec_json(spec: HarvestSpec) -> dict:
    return spec.model_dump(mode="json")


class JobRunner:
    def __init__(self, settings: Settings, make_session: sessionmaker[Session]):
        self.settings = settings
        self.make_session = make_session
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._shutdown = threading.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._heartbeat: threading.Thread | None = None

    # ---- rows -------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.make_session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id!r}; list jobs with GET /v1/jobs")
            s.expunge(job)
            return job

    def list(self, limit: int = 50, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None: no more)."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        if cursor is not None:
            when, job_id = decode_cursor(cursor, "jobs:newest", (str, str)).key
            after = datetime.fromisoformat(when)
            query = query.where(
                or_(Job.created_at < after, and_(Job.created_at == after, Job.id < job_id))
            )
        with self.make_session() as s:
            jobs = list(s.scalars(query))
            s.expunge_all()
        if len(jobs) <= limit:
            return jobs, None
        last = jobs[limit - 1]
        key = (last.created_at.isoformat(), last.id)
        return jobs[:limit], encode_cursor(Cursor("jobs:newest", key))

    def _update(self, job_id: str, **values) -> None:
        with self.make_session() as s:
            job = s.get(Job, job_id)
            if job is not None:
                for k, v in values.items():
                    setattr(job, k, v)
                s.commit()

    # ---- submit / cancel ----------------------------------------------------------

    def submit(self, spec: HarvestSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """(the job, whether it is new). Same key + same spec replays; same key + another
        spec is IdempotencyConflict; an active job for the same set is joined."""
        body = _spec_json(spec)
        with self._lock, self.make_session() as s:
            if idempotency_key is not None:
                job = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
                if job is not None:
                    if job.kind != HARVEST or job.spec != body:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was used for job {job.id} "
                            "with a different body; use a new key for a new request",
                            field="Idempotency-Key",
                        )
                    s.expunge(job)
                    return job, False
            active = s.scalar(
                select(Job)
                .where(Job.kind == HARVEST, Job.spec_hash == spec.set_id(), Job.status.in_(ACTIVE))
                .order_by(Job.created_at)
            )
            if active is not None:  # two runs of one set would be two writers of its shards
                s.expunge(active)
                return active, False
            job = Job(
                kind=HARVEST,
                spec=body,
                spec_hash=spec.set_id(),
                status="queued",
                idempotency_key=idempotency_key,
            )
            s.add(job)
            s.commit()
            s.refresh(job)
            s.expunge(job)
            return job, True

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in FINISHED:
            raise JobFinished(f"job {job_id} has already {job.status}; nothing to cancel")
        with self._lock:
            event = self._cancel.get(job_id)
            alive = job_id in self._threads and self._threads[job_id].is_alive()
        if event is not None and alive:
            event.set()  # the thread marks it cancelled once the harvest has stopped
            self._update(job_id, error=CANCEL_REQUESTED)
            return self.get(job_id)
        # Nobody runs it (one UPDATE, so a runner claiming it meanwhile wins), or another
        # process does: its heartbeat reads the request and stops the harvest.
        with self.make_session() as s:
            stopped = s.execute(
                update(Job)
                .where(Job.id == job_id, self._claimable(utcnow()))
                .values(status="cancelled", error="cancelled before it ran", lease_expires_at=None)
            ).rowcount
            s.commit()
        if not stopped:
            self._update(job_id, error=CANCEL_REQUESTED)
        return self.get(job_id)

    # ---- running --------------------------------------------------------------------

    def start(self, job_id: str) -> None:
        """Run the job in a background thread of this process."""
        with self._lock:
            if job_id in self._threads and self._threads[job_id].is_alive():
                return
            self._cancel[job_id] = threading.Event()
            t = threading.Thread(target=self._run_quietly, args=(job_id,), daemon=True)
            self._threads[job_id] = t
        t.start()

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        t = self._threads.get(job_id)
        if t is not None:
            t.join(timeout)
        return self.get(job_id)

    @staticmethod
    def _claimable(now: datetime):
        """Queued, or running under a lease that ran out (its runner died); a running job
        without a lease predates revision 0004 and is as orphaned."""
        expired = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
        return or_(Job.status == "queued", and_(Job.status == "running", expired))

    def resume_pending(self) -> list[str]:
        """Start every harvest job nobody runs: queued, or left running by a dead runner.
        Each thread claims its job first, so a job another live runner holds is left be."""
        with self.make_session() as s:
            ids = list(
                s.scalars(
                    select(Job.id)
                    .where(Job.kind == HARVEST, self._claimable(utcnow()))
                    .order_by(Job.created_at)
                )
            )
        for job_id in ids:
            self.start(job_id)
        return ids

    def watch(self, every: float = LEASE_S) -> threading.Thread:
        """Call resume_pending every `every` seconds until shutdown, in a daemon thread:
        the jobs of a runner that died are picked up without a restart."""

        def loop() -> None:
            while not self._shutdown.wait(every):
                try:
                    self.resume_pending()
                except Exception:  # a database blip must not end the watch
                    log.exception("looking for orphaned jobs failed")

        t = threading.Thread(target=loop, name="job-watch", daemon=True)
        t.start()
        return t

    def claim(self, job_id: str) -> bool:
        """Make the job ours and running, in one UPDATE that only matches while it is
        claimable: two runners racing for one job cannot both win."""
        now = utcnow()
        with self.make_session() as s:
            claimed = s.execute(
                update(Job)
                .where(Job.id == job_id, self._claimable(now))
                .values(
                    status="running",
                    owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=LEASE_S),
                    error=None,
                    rate=None,
                    updated_at=now,
                )
            ).rowcount
            s.commit()
        if claimed:
            self._start_heartbeat()
        return claimed == 1

    def renew_leases(self) -> int:
        """Extend the lease of every job this runner is running, and pass on the cancel
        requests other processes wrote on them; returns how many leases it renewed."""
        now = utcnow()
        ours = and_(Job.owner == self.owner, Job.status == "running")
        with self.make_session() as s:
            renewed = s.execute(
                update(Job).where(ours).values(lease_expires_at=now + timedelta(seconds=LEASE_S))
            ).rowcount
            asked = list(s.scalars(select(Job.id).where(ours, Job.error == CANCEL_REQUESTED)))
            s.commit()
        for job_id in asked:
            if job_id in self._cancel:
                self._cancel[job_id].set()
        return renewed

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.is_alive():
                return

            def beat() -> None:
                while not self._shutdown.wait(HEARTBEAT_S):
                    try:
                        self.renew_leases()
                    except Exception:  # try again next beat; the lease has slack
                        log.exception("renewing job leases failed")

            self._heartbeat = threading.Thread(target=beat, name="job-heartbeat", daemon=True)
            self._heartbeat.start()

    def _release(self, job_id: str, error: str) -> None:
        """Back to `queued` for any runner (this one shut down, or the set was busy)."""
        self._update(job_id, status="queued", owner=None, lease_expires_at=None, error=error)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the threads; their jobs go back to `queued` for the next process."""
        self._shutdown.set()
        for t in list(self._threads.values()):
            t.join(timeout)

    def _run_quietly(self, job_id: str) -> None:
        try:
            self.run(job_id)
        except Exception:  # already recorded on the row
            log.exception("harvest job %s failed", job_id)

    def run(
        self, job_id: str, progress: Callable[[int, int], None] | None = None
    ) -> HarvestResult | None:
        """Run a job in this thread, recording everything on its row."""
        from saefeat.pipeline import run_harvest  # the catalog bookkeeping of a harvest

        if not self.claim(job_id):
            return None  # finished, or another live runner has it
        cancel = self._cancel.setdefault(job_id, threading.Event())
        meter = _ProgressMeter(lambda **v: self._update(job_id, **v), progress)

        def should_stop() -> bool:
            return cancel.is_set() or self._shutdown.is_set()

        try:
            # Inside the try: a claimed job must end failed, not stay running under a
            # lease the heartbeat keeps renewing.
            spec = HarvestSpec.model_validate(self.get(job_id).spec)
            result = run_harvest(
                spec, settings=self.settings, progress=meter, should_stop=should_stop
            )
        except HarvestCancelled:
            if self._shutdown.is_set() and not cancel.is_set():
                self._release(job_id, "interrupted by a shutdown")
            else:
                self._finish(job_id, "cancelled", "cancelled; resubmit to resume")
            return None
        except HarvestBusy as e:
            self._release(job_id, str(e))  # tried again once the set is free
            return None
        except KeyboardInterrupt:  # Ctrl-C in the CLI: committed shards stay
            self._finish(job_id, "cancelled", "interrupted; resubmit to resume")
            raise
        except Exception as e:
            self._finish(job_id, "failed", f"{type(e).__name__}: {e}"[:4000])
            raise
        meter.flush()
        if result.skipped:
            shards = ", ".join(f"{s} ({why})" for s, why in result.skipped.items())
            self._finish(
                job_id,
                "failed",
                f"finished with gaps: shard(s) {shards}. The other shards are committed "
                "and the set is marked complete_with_gaps; resubmit the spec to retry "
                "the skipped shards",
            )
        else:
            note = None
            if result.dropped_contexts:
                note = f"{result.dropped_contexts} context(s) with NaN/Inf were dropped"
            self._finish(job_id, "succeeded", note)
        return result

    def _finish(self, job_id: str, status: str, error: str | None) -> None:
        self._update(job_id, status=status, error=error, lease_expires_at=None)


class _ProgressMeter:
    """Turns harvest progress into throttled row updates with a tokens/s rate."""

    def __init__(self, write: Callable[..., None], also: Callable[[int, int], None] | None):
        self.write, self.also = write, also
        self.t0: float | None = None
        self.done0 = 0
        self.last_write = 0.0
        self.pending: dict | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.t0 is None:
            self.t0, self.done0 = now, done
        rate = (done - self.done0) / (now - self.t0) if now > self.t0 else None
        self.pending = {"progress_done": done, "progress_total": total, "rate": rate}
        if self.also:
            self.also(done, total)
        if now - self.last_write >= PROGRESS_EVERY_S or done >= total:
            self.flush()
            self.last_write = now

    def flush(self) -> None:
        if self.pending:
            self.write(**self.pending)
            self.pending = None
