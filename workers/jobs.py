"""The job runner: a job row in SQL is the truth; a thread here runs the job's kind.

What a job does is its kind's (workers/job_kinds.py: harvest, ...); the runner is the
same for all. Life of a job: `submit` writes a `queued` row (or replays the row of the
same Idempotency-Key, or joins the active job of the same kind and spec hash); `start`
runs it in a background thread of this process, which moves it to `running`, writes
progress (done/total, rate) and ends it `succeeded`, `failed` (error text set) or
`cancelled`. `cancel` sets a flag the kind polls; what it committed stays valid, and
resubmitting the spec resumes.

The rows' queries are storage/catalog/job_store.py's; this module keeps the threads,
the heartbeat and the lease timing.

Several processes may run jobs (`saefeat serve --workers N`, the CLI): a runner claims a
job with one conditional UPDATE (queued, or running under a lease that has run out) that
writes its owner id and a lease expiry, and a heartbeat renews the leases of the jobs it
runs. So each job runs in one place, and a job whose process died (its lease runs out)
is picked up by `resume_pending`, which the API calls on start and then every LEASE_S.
Every claim is an attempt, kept on the row (`attempts`, revision 0005) with how it
ended; a job picked up again more than settings.max_job_resumes times fails with that
history instead of running again. On shutdown the runner hands its jobs back to
`queued`.

Busy means wait: a runner runs at most `max_running` jobs at once (settings.
max_running_jobs; default the cluster's CPUs). The others stay `queued` in a line, each
with its place (`queue_position`) and cancellable; none fails for want of room. The line
is fair between the keys that submitted (round robin): a job's round is how many jobs
of its key already wait or run here, and the line is ordered by round, then by arrival,
so one key's hundred jobs do not hold back another key's first. A job that could never
be placed is refused at submit (saefeat/admission.py). With several processes each keeps
its own line: a queued job runs in whichever has room first; one picked up again after
its runner died counts as a key of its own (the row does not say who sent it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from saefeat.config import Settings
from saefeat.errors import SaefeatError
from saefeat.storage.catalog import job_store
from saefeat.storage.catalog.db import database_unreachable
from saefeat.storage.catalog.job_status import FINISHED, JobStatus
from saefeat.storage.catalog.job_store import CANCEL_REQUESTED, LEASE_LOST
from saefeat.storage.catalog.models import Job, utcnow
from saefeat.workers.job_kinds import (
    JobBusy,
    JobStopped,
    job_kind,
    job_kind_names,
    kind_for_spec,
)
from saefeat.workers.job_progress import ProgressMeter

# The row markers are the store's; callers (pipeline_job, tests) import them from here too.
__all__ = ["CANCEL_REQUESTED", "FINISHED", "LEASE_LOST", "LEASE_S", "SHUTDOWN"]
__all__ += ["JobFinished", "JobRunner"]

log = logging.getLogger(__name__)
LEASE_S = 60.0  # a running job's claim holds this long unless its runner renews it
HEARTBEAT_S = LEASE_S / 4  # how often a runner renews its leases
SHUTDOWN = "interrupted by a shutdown"
END_RETRY_MAX_S = 10.0  # the longest pause between tries to write a job's end


class JobFinished(SaefeatError):
    status_code = 409


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
        # The line of jobs started here that wait for room, first first; how many run.
        self._room = threading.Condition(self._lock)
        self._line: list[str] = []
        self._running = 0
        self._sender: dict[str, str | None] = {}  # job id -> the key that submitted it
        self._place: dict[str, tuple[int, int]] = {}  # job id -> (round, arrival)
        self._arrivals = 0
        self._running_by: Counter = Counter()  # key -> its jobs running here

    # ---- rows -------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.make_session() as s:
            job = job_store.get_job(s, job_id)
            s.expunge(job)
            return job

    def list(self, limit: int = 50, cursor: str | None = None) -> tuple[list[Job], str | None]:
        """A page of jobs, newest first, and the cursor of the next page (None: no more)."""
        with self.make_session() as s:
            jobs, next_cursor = job_store.list_jobs(s, limit, cursor)
            s.expunge_all()
            return jobs, next_cursor

    def latest_many(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], Job]:
        """The newest job of each (kind, spec hash) pair that has one (a pipeline's
        stages), in one query."""
        with self.make_session() as s:
            jobs = job_store.latest_jobs(s, keys)
            for job in jobs.values():
                s.expunge(job)
            return jobs

    def _update(self, job_id: str, **values) -> None:
        with self.make_session() as s:
            job_store.update_job(s, job_id, **values)

    # ---- submit / cancel ----------------------------------------------------------

    def submit(self, spec: BaseModel, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """(the job, whether it is new); the kind is the one that takes the spec's type.
        Same key + same spec replays; same key + another spec is IdempotencyConflict; an
        active job of the same kind and spec hash is joined."""
        kind = kind_for_spec(spec)
        body, spec_hash = spec.model_dump(mode="json"), kind.spec_hash(spec)
        with self._lock, self.make_session() as s:
            job, new = job_store.submit_job(s, kind.name, body, spec_hash, idempotency_key)
            s.expunge(job)
            return job, new

    def submit_and_start(self, spec: BaseModel, idempotency_key: str | None = None,
                         sender: str | None = None) -> Job:  # fmt: skip
        """`submit`, then start the job if it is new (a replayed or joined one runs
        already); `sender`: who submitted it (an API key's id), for the line's fairness."""
        job, created = self.submit(spec, idempotency_key)
        if created:
            self.start(job.id, sender)
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.status in FINISHED:
            raise JobFinished(f"job {job_id} has already {job.status}; nothing to cancel")
        with self._room:
            event = self._cancel.get(job_id)
            alive = job_id in self._threads and self._threads[job_id].is_alive()
            waiting = job_id in self._line and event is not None
            if waiting:  # in our line, unclaimed: it leaves the line and ends here, now
                self._line.remove(job_id)
                event.set()
                self._room.notify_all()
        if waiting:  # this call or its thread ends it unrun: nothing more to write
            with self.make_session() as s:
                job_store.cancel_unclaimed(s, job_id, utcnow())
            return self.get(job_id)
        if event is not None and alive:
            event.set()  # the thread marks it cancelled once the harvest has stopped
            self._update(job_id, error=CANCEL_REQUESTED)
            return self.get(job_id)
        # Nobody runs it (one UPDATE, so a runner claiming it meanwhile wins), or another
        # process does: its heartbeat reads the request and stops the harvest.
        with self.make_session() as s:
            stopped = job_store.cancel_unclaimed(s, job_id, utcnow())
        if not stopped:
            self._update(job_id, error=CANCEL_REQUESTED)
        return self.get(job_id)

    # ---- running --------------------------------------------------------------------

    def start(self, job_id: str, sender: str | None = None) -> None:
        """Run the job in a background thread of this process once there is room; it
        takes its place in the line now (its sender's next round, after the jobs
        already there in that round)."""
        with self._lock:
            if job_id in self._threads and self._threads[job_id].is_alive():
                return
            self._cancel[job_id] = threading.Event()
            t = threading.Thread(target=self._run_when_room, args=(job_id,), daemon=True)
            self._threads[job_id] = t
            waiting = sum(1 for j in self._line if self._sender.get(j) == sender)
            self._sender[job_id] = sender
            self._place[job_id] = (waiting + self._running_by[sender], self._arrivals)
            self._arrivals += 1
            self._line.append(job_id)
            self._line.sort(key=self._place.__getitem__)
        t.start()

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to run here, 2 after it, ...; None: not waiting here."""
        with self._lock:
            return self._line.index(job_id) + 1 if job_id in self._line else None

    def max_running(self) -> int:
        if self.settings.max_running_jobs is not None:
            return self.settings.max_running_jobs
        from saefeat.admission import cluster_resources

        found = cluster_resources(self.settings)
        return max(1, found.cpus if found else os.cpu_count() or 1)

    def _wait_for_room(self, job_id: str, cancel: threading.Event) -> bool:
        """Until the job heads the line and fewer than max_running run; False when it
        was cancelled or the runner shuts down meanwhile (it leaves the line)."""
        limit = self.max_running()
        with self._room:
            try:
                while not (self._line[:1] == [job_id] and self._running < limit):
                    if cancel.is_set() or self._shutdown.is_set():
                        return False
                    self._room.wait(0.5)  # a shutdown sets no condition: look again soon
                self._running += 1
                self._running_by[self._sender.get(job_id)] += 1
                return True
            finally:
                if job_id in self._line:  # a cancel may have taken it out already
                    self._line.remove(job_id)
                self._place.pop(job_id, None)
                self._room.notify_all()

    def _run_when_room(self, job_id: str) -> None:
        cancel = self._cancel[job_id]
        if not self._wait_for_room(job_id, cancel):
            with self._lock:
                self._sender.pop(job_id, None)
            if cancel.is_set():  # nobody claimed it: it ends cancelled here, unrun
                with self.make_session() as s:
                    job_store.cancel_unclaimed(s, job_id, utcnow())
            return  # shutting down: it stays queued for the next runner
        try:
            self._run_quietly(job_id)
        finally:
            with self._room:
                self._running -= 1
                self._running_by[self._sender.pop(job_id, None)] -= 1
                self._room.notify_all()

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        t = self._threads.get(job_id)
        if t is not None:
            t.join(timeout)
        return self.get(job_id)

    def resume_pending(self) -> list[str]:
        """Start every job nobody runs: queued, or left running by a dead runner.
        Each thread claims its job first, so a job another live runner holds is left be."""
        with self.make_session() as s:
            ids = job_store.claimable_ids(s, job_kind_names(), utcnow())
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
        claimable: two runners racing for one job cannot both win. False also when the
        job was resumed too often: it is failed instead."""
        with self.make_session() as s:
            claimed = job_store.claim_job(s, job_id, self.owner, LEASE_S, utcnow())
        if not claimed:
            return False
        self._start_heartbeat()
        with self.make_session() as s:  # the history of its attempts; fails it past the limit
            return job_store.begin_attempt(
                s, job_id, self.owner, self.settings.max_job_resumes, utcnow()
            )

    def renew_leases(self) -> int:
        """Extend the lease of every job this runner is running, and pass on the cancel
        requests other processes wrote on them; returns how many leases it renewed."""
        with self.make_session() as s:
            renewed, asked = job_store.renew_leases(s, self.owner, LEASE_S, utcnow())
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

    def _release(self, job_id: str, error: str, *, ran: bool = True) -> None:
        """Back to `queued` for any runner (this one shut down, or the work was busy)."""
        self._end_attempt(job_id, error if ran else None, status=JobStatus.QUEUED, owner=None,
                          lease_expires_at=None, error=error)  # fmt: skip

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the threads and hand their jobs back to `queued` for the next process;
        a job whose thread did not stop in time is handed back all the same."""
        self._shutdown.set()
        for t in list(self._threads.values()):
            t.join(timeout)
        with self.make_session() as s:
            ours = job_store.running_ids(s, self.owner)
        for job_id in ours:
            self._release(job_id, SHUTDOWN)

    def _run_quietly(self, job_id: str) -> None:
        try:
            self.run(job_id)
        except Exception:  # already recorded on the row
            log.exception("job %s failed", job_id)

    def run(
        self,
        job_id: str,
        progress: Callable[[int, int], None] | None = None,
        also_stop: Callable[[], bool] | None = None,
        work: Callable[..., Any] | None = None,
    ) -> Any:
        """Run a job in this thread, recording everything on its row; returns what the
        kind made (None: not run here, cancelled, handed back, or failed). `also_stop`:
        another reason to stop (a pipeline's own stop, for its stage jobs). `work`: what
        runs instead of the kind's `run`, with the same arguments and outcome (the CLI's
        in-process runs); the row is kept just the same."""
        if not self.claim(job_id):
            return None  # finished, failed for too many resumes, or another runner has it
        cancel = self._cancel.setdefault(job_id, threading.Event())
        meter = ProgressMeter(lambda **v: self._update(job_id, **v), progress)

        def should_stop() -> bool:
            return (cancel.is_set() or self._shutdown.is_set()
                    or (also_stop is not None and also_stop()))  # fmt: skip

        try:
            # Inside the try: a claimed job must end failed, not stay running under a
            # lease the heartbeat keeps renewing.
            row = self.get(job_id)
            kind = job_kind(row.kind)
            spec = kind.spec_type.model_validate(row.spec)
            # Ray is started (workers/runtime.ensure_ray) by the work that uses it, when it
            # first does: a job that runs in this process (the CLI's) never pays for it.
            outcome = (work or kind.run)(
                spec, settings=self.settings, progress=meter, should_stop=should_stop
            )
        except JobStopped:
            if self._shutdown.is_set() and not cancel.is_set():
                self._release(job_id, SHUTDOWN)
            else:
                self._finish(job_id, JobStatus.CANCELLED, "cancelled; resubmit to resume")
            return None
        except JobBusy as e:
            self._release(job_id, str(e), ran=False)  # tried again once the work is free
            return None
        except KeyboardInterrupt:  # Ctrl-C in the CLI: what was committed stays
            self._finish(job_id, JobStatus.CANCELLED, "interrupted; resubmit to resume")
            raise
        except Exception as e:
            self._finish(job_id, JobStatus.FAILED, f"{type(e).__name__}: {e}"[:4000])
            raise
        meter.flush()
        self._finish(job_id, outcome.status, outcome.note)
        return outcome.result

    def _end_attempt(self, job_id: str, why: str | None, **values: Any) -> None:
        """Write `values` and close our open attempt with `why`; nothing if the job is no
        longer ours (handed back on shutdown, or taken over after our lease ran out).
        While the catalog is unreachable it tries again (the heartbeat keeps the lease
        meanwhile), until this runner shuts down: then the lease runs out and the next
        runner resumes the job from what it committed."""
        pause = 0.5
        while True:
            try:
                with self.make_session() as s:
                    job_store.end_attempt(s, job_id, self.owner, why, utcnow(), values)
                return
            except Exception as e:
                if not database_unreachable(e) or self._shutdown.is_set():
                    raise
                log.warning("job %s: the catalog is unreachable; its end is written when "
                            "it is back (%s)", job_id, type(e).__name__)  # fmt: skip
            self._shutdown.wait(pause)
            pause = min(pause * 2, END_RETRY_MAX_S)

    def _finish(self, job_id: str, status: str, error: str | None) -> None:
        self._end_attempt(job_id, status if not error else f"{status}: {error}"[:300],
                          status=status, error=error, lease_expires_at=None)  # fmt: skip
