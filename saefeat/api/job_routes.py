"""Jobs over HTTP: submit harvests, trainings, indexings and pipelines (202 + job id,
Idempotency-Key), list, get (a pipeline with its chain of stages), cancel.

Submitting and cancelling need the `jobs` scope, and a submitted spec must pass
saefeat/admission.py before a row is written. Anyone who may read sees a job's id, kind,
status and progress; its spec, set, errors and corpus report (file names, server paths)
only a key with the `jobs` scope sees.

The router brings its own lifespan: on start it makes the app's JobRunner, resumes the
jobs nobody runs (queued, or left running by a process that died) and keeps looking for
such jobs every LEASE_S; on stop it hands its running jobs back to `queued`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from saefeat.admission import admit_harvest, admit_index, admit_pipeline, admit_train
from saefeat.api.auth import AUTH_RESPONSES, optional_key, require_scope
from saefeat.api.errors import problem_responses
from saefeat.api.schemas import Problem
from saefeat.specs import HarvestSpec, IndexSpec
from saefeat.storage.activations import open_set
from saefeat.storage.catalog.keys import has_scope
from saefeat.storage.catalog.models import ApiKey, Job
from saefeat.workers.jobs import JobRunner
from saefeat.workers.pipeline_job import PipelineSpec, plan
from saefeat.workers.train_job import TrainJobSpec


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


JOBS_ONLY = " (null unless the caller's key has the `jobs` scope)"


class StageOut(BaseModel):
    stage: str
    kind: str
    job_id: str | None = Field(description="The latest job of this stage's spec; null: none")
    status: str = Field(description="That job's status; `pending` when there is none")
    progress_done: int = 0
    progress_total: int | None = None


class JobOut(BaseModel):
    id: str
    kind: str
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    progress_done: int = Field(
        description="Units done: tokens (harvest), steps (train), tasks (index), stages"
    )
    progress_total: int | None = Field(description="Units in all")
    rate: float | None = Field(description="Units per second in the current run")
    eta_seconds: float | None = Field(description="Seconds left at the current rate")
    created_at: datetime
    updated_at: datetime
    stages: list[StageOut] | None = Field(
        None, description="A pipeline's chain: each stage and the latest job of its spec"
    )
    detailed: bool = Field(description="Whether the fields below are shown" + JOBS_ONLY)
    activation_set: str | None = Field(
        None, description="Id of the activation set the job fills" + JOBS_ONLY
    )
    spec: dict[str, Any] | None = Field(None, description="The submitted spec" + JOBS_ONLY)
    error: str | None = Field(
        None, description="Why it failed, or a note (cancel, gaps, NaN)" + JOBS_ONLY
    )
    skipped_shards: dict[str, str] | None = Field(
        None, description="Shards left out after killing their worker: why" + JOBS_ONLY
    )
    corpus_report: dict[str, Any] | None = Field(
        None,
        description="Documents used and skipped (empty, undecodable, malformed)" + JOBS_ONLY,
    )


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(default=None, description="Pass as `cursor` for more")


StageKey = tuple[str, str, str]  # (stage name, job kind, spec hash)


def _stage_keys(job: Job) -> list[StageKey] | None:
    """The stages of a pipeline job's plan; None for other kinds, and for a row from an
    older saefeat (shown without its chain)."""
    from saefeat.workers.job_kinds import job_kind

    if job.kind != "pipeline":
        return None
    try:
        steps = plan(PipelineSpec.model_validate(job.spec))
    except Exception:
        return None
    return [(stage.name, stage.kind, job_kind(stage.kind).spec_hash(child))
            for stage, child in steps]  # fmt: skip


def _jobs_out(jobs: list[Job], request: Request, key: ApiKey | None,
              runner: JobRunner) -> list[JobOut]:  # fmt: skip
    """Each job as the API shows it; every pipeline's stage jobs are read in one query."""
    plans = {job.id: _stage_keys(job) for job in jobs}
    latest = runner.latest_many([(k, h) for keys in plans.values() for _, k, h in keys or ()])

    def stages(keys: list[StageKey] | None) -> list[StageOut] | None:
        if keys is None:
            return None
        out = []
        for name, kind, spec_hash in keys:
            job = latest.get((kind, spec_hash))
            out.append(StageOut(stage=name, kind=kind, job_id=job and job.id,
                                status=job.status if job else "pending",
                                progress_done=job.progress_done if job else 0,
                                progress_total=job.progress_total if job else None))  # fmt: skip
        return out

    return [_job_out(job, request, key, stages(plans[job.id])) for job in jobs]


def _job_out(
    job: Job, request: Request, key: ApiKey | None, stages: list[StageOut] | None
) -> JobOut:
    eta = None
    if job.rate and job.progress_total is not None:
        eta = max(0.0, (job.progress_total - job.progress_done) / job.rate)
    summary = JobOut(
        id=job.id,
        kind=job.kind,
        status=job.status,
        progress_done=job.progress_done,
        progress_total=job.progress_total,
        rate=job.rate,
        eta_seconds=eta,
        created_at=job.created_at,
        updated_at=job.updated_at,
        stages=stages,
        detailed=False,
    )
    if key is None or not has_scope(key, "jobs"):
        return summary
    skipped, report = None, None
    if job.kind == "harvest":
        try:  # what the set itself recorded: gaps and the corpus report
            aset = open_set(request.app.state.settings.activations_dir, job.spec_hash)
            skipped = aset.skipped_shards
            report = aset.group.attrs.get("corpus_report")
        except Exception:  # not created yet, or unreadable: the row still answers
            skipped = {}
    return summary.model_copy(
        update={
            "detailed": True,
            "activation_set": job.spec_hash if job.kind == "harvest" else None,
            "spec": job.spec,
            "error": job.error,
            "skipped_shards": skipped,
            "corpus_report": report,
        }
    )


NOT_FOUND = {404: {"model": Problem, "description": "No job with this id"}}
CONFLICT = {409: {"model": Problem, "description": "The job has already finished"}}


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Makes a retry safe: the same key and body answer the same job",
    ),
]


@router.post(
    "/harvests",
    status_code=202,
    response_model=JobAccepted,
    responses=problem_responses(401, 403, 422),
    summary="Submit a harvest job (answers at once; follow the job at `location`)",
    description=(
        "Needs the `jobs` scope. Corpus paths must lie under the server's corpus roots "
        "(relative paths are taken from the first), the model must be in its model cache "
        "or allow-list, and ctx_len, token_budget, batch_size, device and workers within "
        "its limits and its cluster: otherwise 422 naming the field, and no job is made."
    ),
)
def submit_harvest(
    spec: HarvestSpec,
    request: Request,
    response: Response,
    key: Annotated[ApiKey, Depends(require_scope("jobs"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    admit_harvest(spec, request.app.state.settings)  # before any row is written
    return submit_job(spec, request, response, runner, idempotency_key)


def submit_job(spec, request: Request, response: Response, runner: JobRunner,
               idempotency_key: str | None) -> JobAccepted:  # fmt: skip
    """Submit (or replay, or join) and start the job; 202's body and Location header."""
    job = runner.submit_and_start(spec, idempotency_key)
    location = str(request.url_for("get_job", job_id=job.id).path)
    response.headers["Location"] = location
    return JobAccepted(job_id=job.id, status=job.status, location=location)


@router.post(
    "/trainings",
    status_code=202,
    response_model=JobAccepted,
    responses=problem_responses(401, 403, 422),
    summary="Submit a training job: one TrainSpec, or a sweep {specs: [...]} on one set",
    description=(
        "Needs the `jobs` scope. The training runs as a Ray task: `device` cuda asks for a "
        "GPU (422 when the cluster has none), cpu for none, auto for a GPU if there is one; "
        "`resources` asks for custom Ray resources. Each spec's activation set must be "
        "harvested and complete; `resume_from` is refused (a resubmitted or crashed "
        "training resumes from its own last checkpoint). A sweep reads each batch once."
    ),
)
def submit_training(
    spec: TrainJobSpec,
    request: Request,
    response: Response,
    key: Annotated[ApiKey, Depends(require_scope("jobs"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    admit_train(spec, request.app.state.settings)
    return submit_job(spec, request, response, runner, idempotency_key)


@router.post(
    "/indexings",
    status_code=202,
    response_model=JobAccepted,
    responses=problem_responses(401, 403, 422),
    summary="Submit an indexing job for a trained SAE (features, examples, vocab)",
)
def submit_indexing(
    spec: IndexSpec,
    request: Request,
    response: Response,
    key: Annotated[ApiKey, Depends(require_scope("jobs"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    admit_index(spec, request.app.state.settings)
    return submit_job(spec, request, response, runner, idempotency_key)


@router.post(
    "/pipelines",
    status_code=202,
    response_model=JobAccepted,
    responses=problem_responses(401, 403, 422),
    summary="Submit a pipeline: harvest -> train -> index, each stage a job of its own",
    description=(
        "Needs the `jobs` scope. `stages` (default harvest, train, index) run in order; "
        "`train` holds TrainSpec fields (the set is the harvest's), `index` IndexSpec "
        "fields (the SAE is the training's). A stage whose result exists is skipped. "
        "Stages that disagree (a hook the harvest does not take) or an unknown stage: 422 "
        "naming the field, and no job is made. GET /v1/jobs/{id} shows the chain."
    ),
)
def submit_pipeline(
    spec: PipelineSpec,
    request: Request,
    response: Response,
    key: Annotated[ApiKey, Depends(require_scope("jobs"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    admit_pipeline(spec, request.app.state.settings)
    return submit_job(spec, request, response, runner, idempotency_key)


@router.get(
    "/jobs",
    response_model=JobList,
    responses=problem_responses(401, 422),
    summary="Jobs, newest first (specs and errors only for the `jobs` scope)",
)
def list_jobs(
    request: Request,
    runner: Annotated[JobRunner, Depends(get_runner)],
    key: Annotated[ApiKey | None, Depends(optional_key)],
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many")] = 50,
    cursor: Annotated[
        str | None, Query(description="next_cursor of the previous page; omit for the first")
    ] = None,
) -> JobList:
    jobs, next_cursor = runner.list(limit, cursor)
    return JobList(items=_jobs_out(jobs, request, key, runner), next_cursor=next_cursor)


@router.get(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={**problem_responses(401, 422), **NOT_FOUND},
    summary="One job: status, progress (tokens, tokens/s, ETA); spec and error for `jobs`",
)
def get_job(
    job_id: Annotated[str, Path(max_length=32, description="Job id")],
    request: Request,
    runner: Annotated[JobRunner, Depends(get_runner)],
    key: Annotated[ApiKey | None, Depends(optional_key)],
) -> JobOut:
    return _jobs_out([runner.get(job_id)], request, key, runner)[0]


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobOut,
    responses={**AUTH_RESPONSES, **problem_responses(422), **NOT_FOUND, **CONFLICT},
    summary="Cancel a job; committed shards stay, and resubmitting the spec resumes",
)
def cancel_job(
    job_id: Annotated[str, Path(max_length=32, description="Job id")],
    request: Request,
    key: Annotated[ApiKey, Depends(require_scope("jobs"))],
    runner: Annotated[JobRunner, Depends(get_runner)],
) -> JobOut:
    return _jobs_out([runner.cancel(job_id)], request, key, runner)[0]
