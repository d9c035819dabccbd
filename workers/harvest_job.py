"""The `harvest` job kind: a HarvestSpec run by workers/harvest.py, then mirrored into the
catalog (storage/catalog/set_registry.py). A harvest that had to skip shards fails and
names them; its committed shards stay, and resubmitting the spec retries the gaps."""

from __future__ import annotations

from collections.abc import Callable

from saefeat.config import Settings
from saefeat.specs import HarvestSpec
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.set_registry import record_activation_set
from saefeat.workers.harvest import HarvestResult, harvest
from saefeat.workers.job_kinds import JobKind, JobOutcome, Progress, register_job_kind


def harvest_and_record(
    spec: HarvestSpec,
    *,
    settings: Settings,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HarvestResult:
    """Harvest, then mirror the set and its committed shards into the catalog."""
    result = harvest(spec, settings=settings, progress=progress, should_stop=should_stop)
    with catalog_session(settings) as s:
        record_activation_set(s, result.activation_set)
        s.commit()
    return result


def run_harvest_job(
    spec: HarvestSpec,
    *,
    settings: Settings,
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> JobOutcome:
    result = harvest_and_record(spec, settings=settings, progress=progress,
                                should_stop=should_stop)  # fmt: skip
    if result.skipped:
        shards = ", ".join(f"{s} ({why})" for s, why in result.skipped.items())
        return JobOutcome(
            "failed",
            f"finished with gaps: shard(s) {shards}. The other shards are committed and "
            "the set is marked complete_with_gaps; resubmit the spec to retry the skipped "
            "shards",
            result,
        )
    note = None
    if result.dropped_contexts:
        note = f"{result.dropped_contexts} context(s) with NaN/Inf were dropped"
    return JobOutcome("succeeded", note, result)


HARVEST = register_job_kind(
    JobKind(
        name="harvest", spec_type=HarvestSpec, spec_hash=HarvestSpec.set_id, run=run_harvest_job
    )  # fmt: skip
)
