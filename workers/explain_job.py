"""The `explain` job kind: an ExplainSpec run by workers/explain.py (run_explain).

A job whose features partly failed succeeds with a note counting
them (their errors are logged); one where every attempted feature failed fails. A cancel
keeps what was written; resubmitting resumes (explained features are skipped).
"""

from __future__ import annotations

from saefeat.admission import Admission
from saefeat.config import Settings
from saefeat.specs import ExplainOptions, ExplainSpec
from saefeat.specs.pipeline import build_explain, makes_nothing
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.workers.explain import check_explain, check_explain_setup, run_explain
from saefeat.workers.job_kinds import (
    JobKind,
    JobOutcome,
    JobStopped,
    Route,
    Stage,
    register_job_kind,
)
from saefeat.workers.job_progress import Progress, ShouldStop


def run_explain_job(
    spec: ExplainSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    result = run_explain(spec, settings=settings, progress=progress, should_stop=should_stop)
    if result.cancelled:
        raise JobStopped(f"stopped after {result.explained} feature(s); resubmit to resume")
    if result.failed:
        index, error = next(iter(result.failed.items()))
        note = f"{len(result.failed)} feature(s) failed (e.g. feature {index}: {error}); "
        status = JobStatus.FAILED if result.explained == 0 else JobStatus.SUCCEEDED
        return JobOutcome(status, (note + result.summary())[:4000], result)
    return JobOutcome(JobStatus.SUCCEEDED, result.summary(), result)


def admit(spec: ExplainSpec, ctx: Admission) -> None:
    """check_explain; only its setup half when an earlier pipeline stage makes the SAE."""
    if "sae" in ctx.pending:
        check_explain_setup(spec, ctx.settings)
    else:
        check_explain(spec, ctx.session, ctx.settings)


ROUTE = Route(
    "/saes/{sae_id}/explanations",
    "Explain and score an SAE's features (a job; follow it at `location`)",
    "Each feature gets an automatic label (source `auto`, author = the explainer) "
    "with one score per scorer. Features already explained by the same explainer and "
    "prompt version are skipped, so resubmitting resumes. A feature whose explainer "
    "or scorer fails (unreachable endpoint, unreadable answer) stores nothing and is "
    "counted on the job; the job goes on.",
    scope="explain",
    body_type=ExplainOptions,
    path_fields={"sae_id": "sae"},
)
# Never skipped whole: an explain job itself skips the features already explained.
STAGE = Stage(build_explain, makes_nothing, lambda settings, e: False)
EXPLAIN = register_job_kind(
    JobKind("explain", ExplainSpec, run_explain_job, ROUTE, "features", admit=admit, stage=STAGE)
)
