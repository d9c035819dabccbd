"""Explain jobs over HTTP: `POST /v1/saes/{id}/explanations` (202 + job id,
Idempotency-Key). Progress and cancel are the job routes' (`GET /v1/jobs/{id}`,
`POST /v1/jobs/{id}/cancel`); the work is workers/explain.py's run_explain.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from saefeat.api.auth import require_scope
from saefeat.api.deps import get_session
from saefeat.api.errors import problem_responses
from saefeat.api.job_routes import IdempotencyKey, JobAccepted, get_runner, submit_job
from saefeat.api.params import SaeId
from saefeat.interp.spec import ExplainOptions, ExplainSpec
from saefeat.storage.catalog.models import ApiKey
from saefeat.workers.explain import check_explain
from saefeat.workers.jobs import JobRunner

router = APIRouter(tags=["jobs"])


@router.post(
    "/saes/{sae_id}/explanations",
    status_code=202,
    response_model=JobAccepted,
    responses=problem_responses(401, 403, 404, 422),
    summary="Explain and score an SAE's features (a job; follow it at `location`)",
    description=(
        "Each feature gets an automatic label (source `auto`, author = the explainer) with "
        "one score per scorer. Features already explained by the same explainer and prompt "
        "version are skipped, so resubmitting resumes. A feature whose explainer or scorer "
        "fails (unreachable endpoint, unreadable answer) stores nothing and is counted on "
        "the job; the job goes on."
    ),
)
def submit_explanations(
    sae_id: SaeId,
    body: ExplainOptions,
    request: Request,
    response: Response,
    key: Annotated[ApiKey, Depends(require_scope("explain"))],
    session: Annotated[Session, Depends(get_session)],
    runner: Annotated[JobRunner, Depends(get_runner)],
    idempotency_key: IdempotencyKey = None,
) -> JobAccepted:
    spec = ExplainSpec(sae=sae_id, **body.model_dump())
    check_explain(spec, session, request.app.state.settings)
    return submit_job(spec, request, response, runner, idempotency_key)
