"""Jobs over HTTP: a submit route for every job kind (202 + job id, Idempotency-Key),
generated from the registry (workers/job_kinds.py); list, get (a pipeline with its chain
of stages), cancel.

Submitting needs the kind's scope (`jobs`, or `explain`), and a submitted spec must pass
its kind's admission check before a row is written; cancelling needs `jobs`. Anyone who
may read sees a job's id, kind, status and progress; its spec, set, errors and corpus
report (file names, server paths) only a key with the `jobs` scope sees.

The router brings its own lifespan: on start it makes the app's JobRunner, resumes the
jobs nobody runs (queued, or left running by a process that died) and keeps looking for
such jobs every LEASE_S; on stop it hands its running jobs back to `queued`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field, ValidationError, create_model
from sqlalchemy.orm import Session

from saefeat.admission import Admission
from saefeat.api.auth import AUTH_RESPONSES, optional_key, require_scope
from saefeat.api.convert import columns
from saefeat.api.errors import problem_responses
from saefeat.api.params import SessionDep
from saefeat.api.schemas import Problem
from saefeat.errors import SpecError
from saefeat.specs import HarvestSpec, PipelineSpec
from saefeat.storage.activations import open_set
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.storage.catalog.keys import has_scope
from saefeat.storage.catalog.models import ApiKey, Job
from saefeat.workers.job_kinds import JobKind, job_kinds
from saefeat.workers.jobs import JobRunner
from saefeat.workers.pipeline_job import plan


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
    status: JobStatus
    location: str = Field(description="Where to follow the job: GET this path")


JOBS_ONLY = " (null unless the caller's key has the `jobs` scope)"
# What anyone who may read sees of a job row; its spec, set and errors only `jobs` keys.
PUBLIC_COLUMNS = ("id", "kind", "status", "progress_done", "progress_total", "rate",
                  "created_at", "updated_at")  # fmt: skip


class StageOut(BaseModel):
    stage: str
    kind: str
    job_id: str | None = Field(description="The latest job of this stage's spec; null: none")
    status: JobStatus | Literal["pending"] = Field(
        description="That job's status; `pending` when there is none"
    )
    progress_done: int = 0
    progress_total: int | None = None


class JobOut(BaseModel):
    id: str
    kind: str
    status: JobStatus
    progress_done: int = Field(description="Units done, in the kind's `unit`")
    unit: str = Field(description="What progress counts: tokens (harvest), steps (train), ...")
    progress_total: int | None = Field(description="Units in all")
    rate: float | None = Field(description="Units per second in the current run")
    eta_seconds: float | None = Field(description="Seconds left at the current rate")
    queue_position: int | None = Field(
        None, description="A queued job's place in this server's line: 1 runs next. Busy "
        "means wait: jobs beyond what runs at once wait here, round robin between keys",
    )  # fmt: skip
    created_at: datetime
    updated_at: datetime
    stages: list[StageOut] | None = Field(
        None, description="A pipeline's chain: each stage and the latest job of its spec"
    )
    detailed: bool = Field(description="Whether the fields below are shown" + JOBS_ONLY)
    activation_set: str | None = Field(
        None, description="Id of the activation set the job fills" + JOBS_ONLY
    )
    activation_sets: list[str] | None = Field(
        None, description="Ids of every activation set the job fills: a paired harvest's "
        "two, the model's (`activation_set`) then the paired model's" + JOBS_ONLY,
    )  # fmt: skip
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
    if job.kind != "pipeline":
        return None
    try:
        steps = plan(PipelineSpec.model_validate(job.spec))
    except Exception:
        return None
    return [(kind.name, kind.name, kind.spec_hash(child)) for kind, child in steps]


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

    return [_job_out(job, request, key, stages(plans[job.id]), runner.queue_position(job.id))
            for job in jobs]  # fmt: skip


def _job_out(job: Job, request: Request, key: ApiKey | None, stages: list[StageOut] | None,
             queue_position: int | None) -> JobOut:  # fmt: skip
    eta = None
    if job.rate and job.progress_total is not None:
        eta = max(0.0, (job.progress_total - job.progress_done) / job.rate)
    summary = JobOut(
        **columns(job, *PUBLIC_COLUMNS),
        unit=_unit(job.kind),
        eta_seconds=eta,
        queue_position=queue_position if job.status == JobStatus.QUEUED else None,
        stages=stages,
        detailed=False,
    )
    if key is None or not has_scope(key, "jobs"):
        return summary
    skipped, report, sets = None, None, None
    if job.kind == "harvest":
        sets = _harvest_sets(job)
        try:  # what the (first) set itself recorded: gaps and the corpus report
            aset = open_set(request.app.state.settings.activations_dir, sets[0])
            skipped = aset.skipped_shards
            report = aset.group.attrs.get("corpus_report")
        except Exception:  # not created yet, or unreadable: the row still answers
            skipped = {}
    return summary.model_copy(
        update={
            "detailed": True,
            "activation_set": sets[0] if sets else None,
            "activation_sets": sets,
            "spec": job.spec,
            "error": job.error,
            "skipped_shards": skipped,
            "corpus_report": report,
        }
    )


def _harvest_sets(job: Job) -> list[str]:
    """The sets a harvest job fills: its spec hash, the set's id; a paired harvest's hash
    also names the paired model, and its spec names the two sets."""
    spec = job.spec or {}
    if spec.get("paired_model") is None:
        return [job.spec_hash]
    try:
        return HarvestSpec.model_validate(spec).set_ids()
    except Exception:  # a spec this version cannot read: the row still answers
        return [job.spec_hash]


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


@router.get(
    "/jobs",
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


def _unit(kind: str) -> str:
    known = job_kinds().get(kind)
    return known.unit if known is not None else ""


def _accepted_model(kind: JobKind) -> type[BaseModel]:
    """JobAccepted; for a kind whose result is read at a route of its own, its id too."""
    if kind.route.result is None:
        return JobAccepted
    key, _ = kind.route.result
    where = Field(description="Where the results appear: GET this path")
    fields: dict[str, Any] = {key: (str, ...), "job_id": (str, ...),
                              "status": (JobStatus, ...), "location": (str, where)}  # fmt: skip
    return create_model(f"{kind.name.title()}Accepted", **fields)


def _param(name: str, annotation: Any, default: Any = inspect.Parameter.empty):
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


def _submit_endpoint(kind: JobKind, accepted: type[BaseModel]):
    """The route function of a kind: its body (and path fields) make the spec, the kind's
    admission check runs before any row is written, then the job is submitted. Its
    signature is built here so FastAPI sees the kind's own body type, path and scope."""
    route = kind.route

    def endpoint(*, body: BaseModel, request: Request, response: Response, key: ApiKey,
                 runner: JobRunner, session: Session, idempotency_key: str | None = None,
                 **path: str) -> BaseModel:  # fmt: skip
        fields = {route.path_fields[name]: value for name, value in path.items()}
        try:
            spec = kind.spec_type(**body.model_dump(), **fields) if fields else body
        except ValidationError as e:  # a path field the spec refuses (`..` as an SAE id)
            first = e.errors()[0]
            raise SpecError(first["msg"].removeprefix("Value error, "),
                            field=".".join(str(p) for p in first["loc"])) from None  # fmt: skip
        kind.admit(spec, Admission(request.app.state.settings, session))
        job = runner.submit_and_start(spec, idempotency_key, sender=str(key.id))
        if route.result is None:
            location = str(request.url_for("get_job", job_id=job.id).path)
            out = JobAccepted(job_id=job.id, status=job.status, location=location)
        else:
            result_key, route_name = route.result
            location = str(request.url_for(route_name, **{result_key: job.spec_hash}).path)
            out = accepted(**{result_key: job.spec_hash}, job_id=job.id, status=job.status,
                           location=location)  # fmt: skip
        response.headers["Location"] = location
        return out

    path_params = [
        _param(name, Annotated[str, Path(max_length=128, description=f"The spec's `{field}`")])
        for name, field in route.path_fields.items()
    ]
    endpoint.__signature__ = inspect.Signature(
        [
            *path_params,
            _param("body", Annotated[route.body_type or kind.spec_type, Body()]),
            _param("request", Request),
            _param("response", Response),
            _param("key", Annotated[ApiKey, Depends(require_scope(route.scope))]),
            _param("runner", Annotated[JobRunner, Depends(get_runner)]),
            _param("session", SessionDep),
            _param("idempotency_key", IdempotencyKey, None),
        ],
        return_annotation=accepted,
    )
    endpoint.__name__ = f"submit_{kind.name}"
    return endpoint


def add_submit_routes(router: APIRouter) -> None:
    """POST {route.path} for every job kind in the registry."""
    for kind in job_kinds().values():
        accepted = _accepted_model(kind)
        router.add_api_route(
            kind.route.path,
            _submit_endpoint(kind, accepted),
            methods=["POST"],
            status_code=202,
            response_model=accepted,
            responses=problem_responses(401, 403, 404, 422),
            summary=kind.route.summary,
            description=kind.route.description or None,
            tags=["jobs"],
            name=f"submit_{kind.name}",
        )


add_submit_routes(router)
