"""The `harvest` job kind: a HarvestSpec run by workers/harvest.py, then mirrored into the
catalog (storage/catalog/set_registry.py). A harvest that had to skip shards fails and
names them; its committed shards stay, and resubmitting the spec retries the gaps."""

from __future__ import annotations

from typing import Unpack

from saefeat.admission import admit_harvest
from saefeat.config import Settings
from saefeat.specs import HarvestSpec
from saefeat.specs.pipeline import build_harvest, harvest_makes
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.storage.catalog.set_registry import record_activation_set
from saefeat.workers.harvest import HarvestResult, harvest
from saefeat.workers.job_kinds import JobKind, JobOutcome, Route, Stage, register_job_kind
from saefeat.workers.job_progress import Progress, RunCallbacks, ShouldStop


def harvest_and_record(
    spec: HarvestSpec, *, settings: Settings, **run: Unpack[RunCallbacks]
) -> HarvestResult:
    """Harvest, then mirror the set and its committed shards into the catalog."""
    result = harvest(spec, settings=settings, **run)
    with catalog_session(settings) as s:
        record_activation_set(s, result.activation_set)
        s.commit()
    return result


def run_harvest_job(
    spec: HarvestSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    result = harvest_and_record(spec, settings=settings, progress=progress,
                                should_stop=should_stop)  # fmt: skip
    if result.skipped:
        shards = ", ".join(f"{s} ({why})" for s, why in result.skipped.items())
        return JobOutcome(
            JobStatus.FAILED,
            f"finished with gaps: shard(s) {shards}. The other shards are committed and "
            "the set is marked complete_with_gaps; resubmit the spec to retry the skipped "
            "shards",
            result,
        )
    note = None
    if result.dropped_contexts:
        note = f"{result.dropped_contexts} context(s) with NaN/Inf were dropped"
    return JobOutcome(JobStatus.SUCCEEDED, note, result)


def harvested(settings: Settings, spec: HarvestSpec) -> bool:
    """Its set is complete already (a pipeline skips the stage)."""
    from saefeat.storage.activations import STATUS_COMPLETE, open_set

    try:
        return open_set(settings.activations_dir, spec.set_id()).status == STATUS_COMPLETE
    except Exception:  # not there (or unreadable): harvest it
        return False


ROUTE = Route(
    "/harvests",
    "Submit a harvest job (answers at once; follow the job at `location`)",
    "Needs the `jobs` scope. Corpus paths must lie under the server's corpus roots "
    "(relative paths are taken from the first), the model must be in its model cache "
    "or allow-list, and ctx_len, token_budget, batch_size, device and workers within "
    "its limits and its cluster: otherwise 422 naming the field, and no job is made.",
)
STAGE = Stage(build_harvest, harvest_makes, harvested)
HARVEST = register_job_kind(
    JobKind("harvest", HarvestSpec, run_harvest_job, ROUTE, "tokens", admit=admit_harvest,
            stage=STAGE)
)  # fmt: skip
