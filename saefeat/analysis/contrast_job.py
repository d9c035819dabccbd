"""Contrasts as jobs: a `contrast` job row in SQL, run in a thread of this process.

HOOK FOR THE GENERIC JOB RUNNER: workers/jobs.py runs harvest jobs only today. When it
takes a registry of job kinds, register
    JobKind("contrast", ContrastSpec, ContrastSpec.contrast_id, run_contrast_job)
and let the routes call JobRunner.submit/start; this class (submit with Idempotency-Key,
a thread per job, progress on the row) then goes. Until then a contrast job left queued
or running by a process that died stays so; resubmitting its spec runs it again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from saefeat.analysis.contrast import ContrastResult, ContrastSpec, check_inputs, run_contrast
from saefeat.analysis.contrast_pass import ContrastCancelled
from saefeat.config import Settings
from saefeat.storage.catalog.contrasts import write_contrast
from saefeat.storage.catalog.models import Job
from saefeat.workers.jobs import IdempotencyConflict

log = logging.getLogger(__name__)
CONTRAST = "contrast"
ACTIVE = ("queued", "running")


def run_contrast_job(
    spec: ContrastSpec,
    *,
    settings: Settings,
    make_session: sessionmaker[Session],
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ContrastResult:
    """Run the contrast and store it in the catalog (one transaction)."""
    result = run_contrast(spec, settings=settings, progress=progress, should_stop=should_stop)
    with make_session() as s:
        write_contrast(s, result)
        s.commit()
    return result


class ContrastJobs:
    def __init__(self, settings: Settings, make_session: sessionmaker[Session]):
        self.settings, self.make_session = settings, make_session
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._stop = threading.Event()

    def submit(self, spec: ContrastSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
        """(the job, whether it is new). Inputs are checked first, so bad input stores
        nothing. Same key + same spec replays; same key + another spec is a conflict; an
        active job of the same spec is joined."""
        body = spec.model_dump(mode="json")
        with self._lock, self.make_session() as s:
            if idempotency_key is not None:
                job = s.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
                if job is not None:
                    if job.kind != CONTRAST or job.spec != body:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was used for job {job.id} "
                            "with a different body; use a new key for a new request",
                            field="Idempotency-Key",
                        )
                    s.expunge(job)
                    return job, False
            check_inputs(spec, self.settings)
            active = s.scalar(
                select(Job).where(
                    Job.kind == CONTRAST,
                    Job.spec_hash == spec.contrast_id(),
                    Job.status.in_(ACTIVE),
                )
            )
            if active is not None:
                s.expunge(active)
                return active, False
            job = Job(
                kind=CONTRAST,
                spec=body,
                spec_hash=spec.contrast_id(),
                status="queued",
                idempotency_key=idempotency_key,
            )
            s.add(job)
            s.commit()
            s.refresh(job)
            s.expunge(job)
            return job, True

    def start(self, job_id: str) -> threading.Thread:
        t = threading.Thread(target=self._run_quietly, args=(job_id,), daemon=True)
        with self._lock:
            self._threads[job_id] = t
        t.start()
        return t

    def wait(self, job_id: str, timeout: float | None = None) -> None:
        t = self._threads.get(job_id)
        if t is not None:
            t.join(timeout)

    def shutdown(self) -> None:
        self._stop.set()

    def _update(self, job_id: str, **values) -> None:
        with self.make_session() as s:
            job = s.get(Job, job_id)
            for k, v in values.items():
                setattr(job, k, v)
            s.commit()

    def _run_quietly(self, job_id: str) -> None:
        try:
            with self.make_session() as s:
                spec = ContrastSpec.model_validate(s.get(Job, job_id).spec)
            self._update(job_id, status="running")
            run_contrast_job(
                spec,
                settings=self.settings,
                make_session=self.make_session,
                progress=lambda d, t: self._update(job_id, progress_done=d, progress_total=t),
                should_stop=self._stop.is_set,
            )
            self._update(job_id, status="succeeded", error=None)
        except ContrastCancelled:
            self._update(job_id, status="cancelled", error="interrupted; resubmit to run again")
        except Exception as e:
            log.exception("contrast job %s failed", job_id)
            self._update(job_id, status="failed", error=f"{type(e).__name__}: {e}"[:4000])
