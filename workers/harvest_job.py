"""The `harvest` job kind: a HarvestSpec run by workers/harvest.py, then mirrored into the
catalog (storage/catalog/set_registry.py). A harvest that had to skip shards fails and
names them; its committed shards stay, and resubmitting the spec retries the gaps.

A paired harvest (`paired_model`, model diffing) is one job over two sets: its tokenizers
are checked first (saefeat/pairing.py), then each side runs in turn as a plain harvest of
its model (an existing set is reused), progress counting both sides' tokens, a cancel
stopping between them; then the two sets' token arrays must be identical. Its outcome
names both sets, and a pipeline skips it only when both are complete."""

from __future__ import annotations

from dataclasses import replace
from typing import Unpack

from saefeat.admission import admit_harvest
from saefeat.config import Settings
from saefeat.pairing import check_pairing, check_same_tokens
from saefeat.specs import HarvestSpec
from saefeat.specs.pipeline import build_harvest, harvest_makes
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.storage.catalog.set_registry import record_activation_set
from saefeat.workers.harvest import HarvestCancelled, HarvestResult, harvest
from saefeat.workers.job_kinds import JobKind, JobOutcome, Route, Stage, register_job_kind
from saefeat.workers.job_progress import Progress, RunCallbacks, ShouldStop


def harvest_and_record(
    spec: HarvestSpec, *, settings: Settings, **run: Unpack[RunCallbacks]
) -> HarvestResult:
    """Harvest, then mirror the set and its committed shards into the catalog. A paired
    spec: both sides (`harvest_pair`)."""
    if spec.paired_model is not None:
        return harvest_pair(spec, settings=settings, **run)
    result = harvest(spec, settings=settings, **run)
    with catalog_session(settings) as s:
        record_activation_set(s, result.activation_set)
        s.commit()
    return result


def harvest_pair(
    spec: HarvestSpec,
    *,
    settings: Settings,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> HarvestResult:
    """The model's side, then the paired model's, each harvested and recorded as a plain
    spec of its model; the tokenizers are checked before and the token arrays after. The
    result is the model's side, with the paired model's in `paired`."""
    check_pairing(spec)
    sides = spec.sides()
    done: list[HarvestResult] = []
    for i, side in enumerate(sides):
        if should_stop and should_stop():
            raise HarvestCancelled("the harvest was cancelled; resubmit it to resume")
        before = sum(r.activation_set.n_tokens for r in done)
        report = _side_progress(progress, before, len(sides) - i)
        done.append(harvest_and_record(side, settings=settings, progress=report,
                                       should_stop=should_stop))  # fmt: skip
    first, paired = done
    check_same_tokens(spec, first.activation_set, paired.activation_set)
    return replace(first, paired=paired)


def _side_progress(progress: Progress | None, before: int, sides_left: int) -> Progress | None:
    """One side's progress as the pair's: the sides done before it counted in, and the
    total its own tokens times the sides left (identical tokens: the same count)."""
    if progress is None:
        return None

    def report(done: int, total: int | None, *phase) -> None:
        progress(before + done, None if total is None else before + total * sides_left,
                 *phase)  # fmt: skip

    return report


def run_harvest_job(
    spec: HarvestSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    result = harvest_and_record(spec, settings=settings, progress=progress,
                                should_stop=should_stop)  # fmt: skip
    paired = result.paired is not None

    def named(r: HarvestResult) -> str:  # a paired harvest says which set
        return f"set {r.activation_set.id}: " if paired else ""

    gaps = [f"{named(r)}shard(s) " + ", ".join(f"{s} ({why})" for s, why in r.skipped.items())
            for r in result.sides() if r.skipped]  # fmt: skip
    if gaps:
        which = "each such set is" if paired else "the set is"
        return JobOutcome(
            JobStatus.FAILED,
            f"finished with gaps: {'; '.join(gaps)}. The other shards are committed and "
            f"{which} marked complete_with_gaps; resubmit the spec to retry the skipped "
            "shards",
            result,
        )
    notes = []
    if paired:
        a, b = (r.activation_set.id for r in result.sides())
        notes.append(f"sets {a} ({spec.model}) and {b} ({spec.paired_model}), on identical "
                     "tokens")  # fmt: skip
    notes += [f"{named(r)}{r.dropped_contexts} context(s) with NaN/Inf were dropped"
              for r in result.sides() if r.dropped_contexts]  # fmt: skip
    return JobOutcome(JobStatus.SUCCEEDED, "; ".join(notes) or None, result)


def harvested(settings: Settings, spec: HarvestSpec) -> bool:
    """Its set (a paired harvest: both) is complete already (a pipeline skips the stage)."""
    from saefeat.storage.activations import STATUS_COMPLETE, open_set

    try:
        return all(open_set(settings.activations_dir, set_id).status == STATUS_COMPLETE
                   for set_id in spec.set_ids())  # fmt: skip
    except Exception:  # not there (or unreadable): harvest it
        return False


ROUTE = Route(
    "/harvests",
    "Submit a harvest job (answers at once; follow the job at `location`)",
    "Needs the `jobs` scope. Corpus paths must lie under the server's corpus roots "
    "(relative paths are taken from the first), the model must be in its model cache "
    "or allow-list, and ctx_len, token_budget, batch_size, device and workers within "
    "its limits and its cluster: otherwise 422 naming the field, and no job is made. "
    "A `paired_model` (model diffing) must pass the same model check and share the "
    "model's tokenizer (422 naming `paired_model`); the job then fills both sets, "
    "`activation_sets` on the job.",
)
STAGE = Stage(build_harvest, harvest_makes, harvested)
HARVEST = register_job_kind(
    JobKind("harvest", HarvestSpec, run_harvest_job, ROUTE, "tokens", admit=admit_harvest,
            stage=STAGE)
)  # fmt: skip
