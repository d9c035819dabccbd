"""The `explain` job kind: an ExplainSpec run by workers/explain.py (run_explain).

A job whose features partly failed succeeds with a note counting
them (their errors are logged); one where every attempted feature failed fails. A cancel
keeps what was written; resubmitting resumes (explained features are skipped).
"""

from __future__ import annotations

from collections.abc import Callable

from saefeat.config import Settings
from saefeat.interp.spec import ExplainSpec
from saefeat.workers.explain import run_explain
from saefeat.workers.job_kinds import JobKind, JobOutcome, JobStopped, Progress, register_job_kind


def run_explain_job(
    spec: ExplainSpec,
    *,
    settings: Settings,
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> JobOutcome:
    result = run_explain(spec, settings=settings, progress=progress, should_stop=should_stop)
    if result.cancelled:
        raise JobStopped(f"stopped after {result.explained} feature(s); resubmit to resume")
    if result.failed:
        index, error = next(iter(result.failed.items()))
        note = f"{len(result.failed)} feature(s) failed (e.g. feature {index}: {error}); "
        status = "failed" if result.explained == 0 else "succeeded"
        return JobOutcome(status, (note + result.summary())[:4000], result)
    return JobOutcome("succeeded", result.summary(), result)


EXPLAIN = register_job_kind(
    JobKind(name="explain", spec_type=ExplainSpec, spec_hash=ExplainSpec.spec_hash,
            run=run_explain_job)
)  # fmt: skip
