"""The `contrast` job kind: a ContrastSpec run by saefeat/analysis/contrast.py, its
results stored in the catalog in one transaction once the statistics are done."""

from __future__ import annotations

from collections.abc import Callable

from saefeat.analysis.contrast import ContrastSpec, run_contrast
from saefeat.analysis.contrast_pass import ContrastCancelled
from saefeat.config import Settings
from saefeat.workers.job_kinds import JobKind, JobOutcome, JobStopped, Progress, register_job_kind


def run_contrast_job(
    spec: ContrastSpec,
    *,
    settings: Settings,
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> JobOutcome:
    from saefeat.storage.catalog.contrasts import write_contrast
    from saefeat.storage.catalog.db import catalog_session

    try:
        result = run_contrast(spec, settings=settings, progress=progress, should_stop=should_stop)
    except ContrastCancelled as e:
        raise JobStopped(str(e)) from e
    with catalog_session(settings) as s:
        write_contrast(s, result)
        s.commit()
    return JobOutcome("succeeded", None, result)


CONTRAST = register_job_kind(
    JobKind(
        name="contrast",
        spec_type=ContrastSpec,
        spec_hash=ContrastSpec.contrast_id,
        run=run_contrast_job,
    )
)
