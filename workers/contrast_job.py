"""The `contrast` job kind: a ContrastSpec run by workers/contrast.py, its
results stored in the catalog in one transaction once the statistics are done."""

from __future__ import annotations

from typing import Unpack

from saefeat.admission import Admission, admit_contrast
from saefeat.analysis.contrast import ContrastResult, check_inputs
from saefeat.config import Settings
from saefeat.specs import ContrastSpec
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.workers.contrast import run_contrast
from saefeat.workers.job_kinds import JobKind, JobOutcome, Route, register_job_kind
from saefeat.workers.job_progress import Progress, RunCallbacks, ShouldStop


def contrast_and_record(
    spec: ContrastSpec, *, settings: Settings, **run: Unpack[RunCallbacks]
) -> ContrastResult:
    """Run the contrast (a cancel raises ContrastCancelled, a JobStopped), then store its
    results in one transaction (a rerun rewrites them whole)."""
    from saefeat.storage.catalog.contrasts import write_contrast
    from saefeat.storage.catalog.db import catalog_session

    result = run_contrast(spec, settings=settings, **run)
    with catalog_session(settings) as s:
        write_contrast(s, result)
        s.commit()
    return result


def run_contrast_job(
    spec: ContrastSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    result = contrast_and_record(
        spec, settings=settings, progress=progress, should_stop=should_stop
    )
    return JobOutcome(JobStatus.SUCCEEDED, None, result)


def admit(spec: ContrastSpec, ctx: Admission) -> None:
    """The device and corpus paths, then both sets (or the documents of a side given as
    text sources) and the SAE: bad input stores nothing and harvests nothing."""
    admit_contrast(spec, ctx)
    check_inputs(spec, ctx.settings, ctx.session)


ROUTE = Route(
    "/contrasts",
    "Rank an SAE's features by how differently they fire on two corpora",
    "Needs the `jobs` scope. Each side is an activation set (`a`, `b`) or text sources "
    "(`a_corpus`, `b_corpus`: paths under the server's corpus roots) that the job "
    "harvests first with the SAE's model and hook; in those a plain-text file is split "
    "into documents at blank lines. A contrast compares documents: a side with fewer "
    "than two is a 422 naming its field, before any harvest, as are a set at another "
    "model or hook and an unknown SAE; no job is made then.",
    result=("contrast_id", "get_contrast"),
)
CONTRAST = register_job_kind(
    JobKind("contrast", ContrastSpec, run_contrast_job, ROUTE, "tasks", admit=admit)
)
