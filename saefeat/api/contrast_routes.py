"""Contrasts over HTTP and as a page: results and top features.

`POST /v1/contrasts` (the `contrast` job kind's route, workers/contrast_job.py) checks
the inputs before any row is written (a bad set or SAE, or a side given as text sources
with fewer than two documents, is a 422 naming the field; such a side is harvested by
the job, after every side is checked); `GET
/v1/contrasts/{id}` answers the job's status until the results are stored, then the
results with the top features of each side. `/contrasts/{id}` is the page.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from saefeat.api.convert import columns
from saefeat.api.errors import problem_responses
from saefeat.api.params import SessionDep
from saefeat.api.schemas import Problem
from saefeat.errors import NotFoundError
from saefeat.storage.catalog import contrasts as store
from saefeat.storage.catalog import job_store, labels
from saefeat.storage.catalog.job_status import ACTIVE, JobStatus
from saefeat.workers.contrast_job import CONTRAST

TEMPLATES = Jinja2Templates(directory=FilePath(__file__).parent / "templates")
router = APIRouter(tags=["contrasts"])
page_router = APIRouter(include_in_schema=False)
ContrastId = Annotated[str, Path(max_length=64, description="Contrast id (from the POST)")]
NOT_FOUND = {404: {"model": Problem, "description": "No contrast with this id"}}


class ContrastFeatureOut(BaseModel):
    feature_index: int
    side: str = Field(description="'a' or 'b': the set where its window firing is higher")
    token_rate_a: float
    token_rate_b: float
    doc_rate_a: float = Field(description="Documents where it fires anywhere (not tested)")
    doc_rate_b: float
    window_rate_a: float = Field(description="Documents firing in their first `window` tokens")
    window_rate_b: float
    mean_act_a: float
    mean_act_b: float
    mean_act_diff: float
    log_ratio: float = Field(description="log2 of smoothed token firing rates, a over b")
    z: float
    p: float
    q: float = Field(description="Benjamini-Hochberg q-value")
    fisher: bool = Field(description="p from Fisher's exact test (rare feature)")
    label: str | None = Field(None, description="The feature's current label, if it has one")
    url: str = Field(description="The feature's page")


class ContrastOut(BaseModel):
    id: str
    status: JobStatus
    error: str | None = None
    spec: dict
    progress_done: int = 0
    progress_total: int | None = None
    n_tokens_a: int | None = None
    n_tokens_b: int | None = None
    n_docs_a: int | None = None
    n_docs_b: int | None = None
    n_significant_a: int | None = None
    n_significant_b: int | None = None
    auroc: float | None = Field(None, description="Held-out AUROC on the top features")
    classifier_features: list[int] = Field(default_factory=list)
    seconds: float | None = None
    created_at: datetime | None = None
    top_a: list[ContrastFeatureOut] = Field(default_factory=list)
    top_b: list[ContrastFeatureOut] = Field(default_factory=list)


# A stored contrast's columns that ContrastOut shows as they are.
RESULT_COLUMNS = ("id", "spec", "n_tokens_a", "n_tokens_b", "n_docs_a", "n_docs_b",
                  "n_significant_a", "n_significant_b", "auroc", "classifier_features",
                  "seconds", "created_at")  # fmt: skip


def _features(session: Session, run: store.ContrastRun, side: str, n: int):
    rows = store.top_features(session, run, side, n)
    texts = labels.current_label_texts(session, run.sae_id, [r.feature_index for r in rows])
    return [
        ContrastFeatureOut(
            feature_index=r.feature_index,
            side=r.side,
            fisher=r.fisher,
            label=texts.get(r.feature_index),
            url=f"/saes/{run.sae_id}/features/{r.feature_index}",
            **r.stats,
        )
        for r in rows
    ]


def contrast_out(session: Session, contrast_id: str, top: int | None) -> ContrastOut:
    run = store.get_contrast(session, contrast_id)
    job = job_store.latest_job(session, CONTRAST.name, contrast_id)
    if run is None and job is None:
        raise NotFoundError(f"no contrast {contrast_id!r}; submit one with POST /v1/contrasts")
    if run is None or (job is not None and job.status in ACTIVE):
        progress = columns(job, "status", "error", "spec", "progress_done", "progress_total")
        return ContrastOut(id=contrast_id, **progress)
    n = top or int(run.spec.get("top", 20))
    return ContrastOut(
        **columns(run, *RESULT_COLUMNS),
        status=JobStatus.SUCCEEDED,
        top_a=_features(session, run, "a", n),
        top_b=_features(session, run, "b", n),
    )


@router.get(
    "/contrasts/{contrast_id}",
    responses={**problem_responses(422), **NOT_FOUND},
    summary="A contrast: its status, then its statistics and the top features of each side",
)
def get_contrast(
    contrast_id: ContrastId,
    session: SessionDep,
    top: Annotated[int | None, Query(ge=1, le=1000, description="Features per side")] = None,
) -> ContrastOut:
    return contrast_out(session, contrast_id, top)


@page_router.get("/contrasts/{contrast_id}", response_class=HTMLResponse)
def contrast_page(request: Request, contrast_id: str, session: SessionDep) -> HTMLResponse:
    try:
        out = contrast_out(session, contrast_id, None)
    except NotFoundError as exc:
        return TEMPLATES.TemplateResponse(
            request, "missing.html", {"error": str(exc)}, status_code=404
        )
    return TEMPLATES.TemplateResponse(request, "contrast.html", {"c": out})


def install(app: FastAPI, prefix: str, read_guard: list, read_responses: dict) -> None:
    """The JSON routes under `prefix` and the page; reads behind the app's read guard."""
    app.include_router(router, prefix=prefix, dependencies=read_guard, responses=read_responses)
    app.include_router(page_router, dependencies=read_guard)
