"""Harvest jobs over HTTP: submit (202 + job id, Idempotency-Key), list, get, cancel.

The router brings its own lifespan: on start it makes the app's JobRunner, resumes the
jobs nobody runs (queued, or left running by a process that died) and keeps looking for
such jobs every LEASE_S; on stop it hands its running jobs back to `queued`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from saefeat.api.auth import AUTH_RESPONSES, require_scope
from saefeat.api.errors import problem_responses
from saefeat.api.schemas import Problem
from saefeat.corpus import BUILTIN_PYTHON_DOCS
from saefeat.errors import SpecError
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import open_set
from saefeat.storage.catalog.models import ApiKey, Job
from saefeat.workers.jobs import JobRunner


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    runner = JobRunner(app.state.settings, app.state.sessionmaker)
    app.state.job_runner = runner
    runner.resume_pending()
    runner.watch()
    yield
    runner.shutdown()


router = APIRouter(tags=["jobs"], lifespan=lifespan)


def get_runner(request: Request) -> JobRunner:
    runner = getattr(request.app.state, "job_runner", None)
    if runner is None:  # an app used without its lifespan (no `with TestClient(app)`)
        runner = request.app.state.job_runner = JobRunner(
            request.app.state.settings, request.app.state.sessionmaker
        )
    return runner


class JobAccepted(BaseModel):
    job_id: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    location: str = Field(description="Where to follow the job: GET this path")


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    activation_set: str = Field(description="Id of the activation set the job fills")
    spec: dict[str, Any]
    progress_done: int = Field(description="Tokens harvested so far")
    progress_total: int | None = Field(description="Tokens the set will hold")
    rate: float | None = Field(description="Tokens per second in the current run")
    eta_seconds: float | None = Field(description="Seconds left at the current rate")
    error: str | None = Field(description="Why it failed, or a note (cancel, gaps, NaN)")
    skipped_shards: dict[str, str] = Field(
        default_factory=dict, description="Shards left out after killing their worker: why"
    )
    corpus_report: dict[str, Any] | None = Field(
        None, description="Documents used and skipped (empty, undecodable, malformed)"
    )
    created_at: datetime
    updated_at: datetime


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for more")


def _job_out(job: Job, request: Request) -> JobOut:
    eta = None
    if job.rate and job.progress_total is not None:
        eta = max(0.0, (job.progress_total - job.progress_done) / job.rate)
    skipped, report = {}, None
    try:  # what the set itself recorded: gaps and the corpus report
        aset = open_set(request.app.state.settings.activations_dir, job.spec_hash)
        skipped = aset.skipped_shards
        report = aset.group.attrs.get("corpus_report")
    except Exception:  # not created yet, or unreadable: the row still answers
        pass
    return JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        activation_set=job.spec_hash,
        spec=job.spec,
        progress_done=job.progress_done,
        progress_total=job.progress_total,
        rate=job.rate,
        eta_seconds=eta,
        error=job.error,
        skipped_shards=skipped,
        corpus_report=report,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


NOT_FOUND = {404: {"model": Problem, "description": "No job with this id"}}
CONFLICT = {409: {"model": Problem, "description": "The job has already finished"}}


@router.post(
    "/harvests",
    status_code=202,
    response_model=JobAccepted,
    responses=problem_responses(401, 403, 422),
    summary="Submit a harvest job (answers at once; follow the job at `location`)",
)
def submit_harvest(
    spec: HarvestSpec,
    request: Request,
    response: Response,
    key: Annotated[ApiKey, Depends(require_scope("admin"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Makes a retry safe: the same key and body answer the same job",
        ),
    ] = None,
) -> JobAccepted:
    for src in spec.corpus:  # catch the commonest mistake before a job exists
        if src.path != BUILTIN_PYTHON_DOCS and not FilePath(src.path).exists():
            raise SpecError(
                f"corpus path {src.path!r} does not exist on the server", field="corpus"
            )
    job, created = runner.submit(spec, idempotency_key)
    if created:
        runner.start(job.id)
    location = str(request.url_for("get_job", job_id=job.id).path)
    response.headers["Location"] = location
    return JobAccepted(job_id=job.id, status=job.status, location=location)


@router.get(
    "/jobs",
    response_model=JobList,
    responses=problem_responses(422),
    summary="Jobs, newest first",
)
def list_jobs(
    request: Request,
    runner: Annotated[JobRunner, Depends(get_runner)],
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many")] = 50,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first")
    ] = None,
) -> JobList:
    jobs, next_cursor = runner.list(limit, cursor)
    return JobList(items=[_job_out(j, request) for j in jobs], next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={**problem_responses(422), **NOT_FOUND},
    summary="One job: status, progress (tokens, tokens/s, ETA), error",
)
def get_job(
    job_id: Annotated[str, Path(max_length=32, description="Job id")],
    request: Request,
    runner: Annotated[JobRunner, Depends(get_runner)],
) -> JobOut:
    return _job_out(runner.get(job_id), request)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**AUTH_RESPONSES, **problem_responses(422), **NOT_FOUND, **CONFLICT},
    summary="Cancel a job; committed shards stay, and resubmitting the spec resumes",
)
def cancel_job(
    job_id: Annotated[str, Path(max_length=32, description="Job id")],
    request: Request,
    key: Annotated[ApiKey, Depends(require_scope("admin"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
) -> JobOut:
    return _job_out(runner.cancel(job_id), request)
