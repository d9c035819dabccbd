"""The `index` job kind: an IndexSpec run by `index_and_record` inside a Ray task
(which spreads the SAE's shards over the cluster's workers and writes the catalog), so
the job thread loads neither the SAE nor the model. Writing the index replaces the SAE's
feature rows in place (their ids and labels stay), so a re-run after a crash adds none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from saefeat.admission import admit_index
from saefeat.config import Settings
from saefeat.specs import IndexSpec
from saefeat.specs.pipeline import build_index, makes_nothing
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.workers.job_kinds import JobKind, JobOutcome, Route, Stage, register_job_kind
from saefeat.workers.job_progress import Progress, ShouldStop

if TYPE_CHECKING:
    from saefeat.workers.index import IndexResult


def already_indexed(settings: Settings, sae_id: str) -> bool:
    """The catalog holds the SAE's features (an index was written for it)."""
    from sqlalchemy import func, select

    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import Feature

    with catalog_session(settings) as s:
        return bool(s.scalar(select(func.count()).where(Feature.sae_id == sae_id)))


def index_and_record(
    spec: IndexSpec, *, settings: Settings, progress: Progress | None = None
) -> IndexResult:
    """Index a trained SAE over its activation set and write its features to the catalog."""
    from saefeat.errors import NotFoundError
    from saefeat.sae import read_config
    from saefeat.storage import catalog
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.training.trainer import open_complete_set
    from saefeat.workers.index import index_sae

    sae_path = settings.saes_dir / spec.sae
    try:
        cfg = read_config(sae_path)
    except NotFoundError:
        raise NotFoundError(f"no trained SAE {spec.sae!r} under {settings.saes_dir}") from None
    aset = open_complete_set(settings, cfg.activation_set)
    result = index_sae(spec, sae_path=sae_path, aset=aset, settings=settings, progress=progress)
    with catalog_session(settings) as s:
        catalog.write_feature_index(s, spec.sae, result.index)
        s.commit()
    return result


def _index_task(spec: IndexSpec, settings: Settings, box) -> dict:
    from saefeat.workers.ray_stage import report_to

    result = index_and_record(spec, settings=settings, progress=report_to(box))
    return {"d_sae": result.index.d_sae, "n_tokens": result.index.n_tokens}


def run_index_job(
    spec: IndexSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    from saefeat.workers.ray_stage import run_on_ray
    from saefeat.workers.runtime import ensure_ray

    ensure_ray(settings)
    out, _ = run_on_ray(_index_task, (spec, settings), ray_options(spec, 0),
                        progress=progress, should_stop=should_stop)  # fmt: skip
    return JobOutcome(JobStatus.SUCCEEDED, None, out)


def ray_options(spec: IndexSpec, cluster_gpus: int) -> dict[str, Any]:
    """The coordinating task: one CPU (it spreads the shards over tasks of its own)."""
    return {"num_cpus": 1}


ROUTE = Route("/indexings", "Submit an indexing job for a trained SAE (features, examples, vocab)")
STAGE = Stage(build_index, makes_nothing, lambda settings, i: already_indexed(settings, i.sae))
INDEX = register_job_kind(
    JobKind("index", IndexSpec, run_index_job, ROUTE, "batches", admit=admit_index,
            ray_options=ray_options, stage=STAGE)
)  # fmt: skip
