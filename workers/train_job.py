"""The `train` job kind: one SAE or a sweep (several SAEs reading each batch once), trained and
registered by `train_and_record` inside a Ray task placed by the resources the job declares.

Placement: `device` "cuda" asks Ray for a GPU (num_gpus=1), "cpu" for none, "auto" for a
GPU when the cluster has one; `resources` adds custom Ray resources (e.g. {"trainer": 1}
for a node started with that resource). The task checkpoints every
`checkpoint_every_tokens`; when its node dies Ray runs it again once a node with those
resources is back, and the trainer resumes from the last checkpoint (its own train-state
folder), as `saefeat train` does after a crash.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from saefeat.admission import admit_train
from saefeat.config import Settings
from saefeat.devices import on_gpu, pick_device
from saefeat.specs import TrainJobSpec, TrainSpec
from saefeat.specs.pipeline import build_train, train_makes
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.workers.job_kinds import JobKind, JobOutcome, Route, Stage, register_job_kind
from saefeat.workers.job_progress import Progress, ShouldStop

if TYPE_CHECKING:
    from saefeat.training.trainer import TrainResult


def placement_device(spec: TrainJobSpec) -> str:
    """The job's device; with `auto`, the one its specs name (a sweep's agree), so a
    spec's `device: cpu` or `cuda` is honoured, not overridden (admission refuses one that
    disagrees with the job's, or that the cluster lacks)."""
    sides = {on_gpu(s.device) for s in spec.specs if s.device not in (None, "auto")}
    if spec.device != "auto" or len(sides) != 1:
        return spec.device
    return "cuda" if sides.pop() else "cpu"


def ray_options(spec: TrainJobSpec, cluster_gpus: int) -> dict[str, Any]:
    """The Ray task options for this spec on a cluster with that many GPUs; admission
    has refused a cuda spec on a cluster without one."""
    gpu = on_gpu(pick_device(placement_device(spec), cluster_gpus))
    opts: dict[str, Any] = {"num_gpus": 1 if gpu else 0, "num_cpus": 1}
    if spec.resources:
        opts["resources"] = dict(spec.resources)
    return opts


def already_trained(settings: Settings, sae_ids: list[str]) -> bool:
    """Every SAE of the sweep is saved with its metrics and in the catalog."""
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import SAE

    if not all((settings.saes_dir / i / "metrics.json").is_file() for i in sae_ids):
        return False
    with catalog_session(settings) as s:
        return all(s.get(SAE, i) is not None for i in sae_ids)


def train_and_record(
    specs: list[TrainSpec],
    *,
    settings: Settings,
    progress: Callable[[int, int, float], None] | None = None,
) -> list[TrainResult]:
    """Train a sweep and register each SAE with its held-out metrics (FVU on typical and
    on all tokens, MSE, L0, dead/dense, density histogram, CE/KL, excluded-token counts)
    and its SAEBench core record in the catalog."""
    from saefeat.storage import catalog
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.training.trainer import train_sweep

    results = train_sweep(specs, settings=settings, progress=progress)
    with catalog_session(settings) as s:
        for one, result in zip(specs, results, strict=True):
            cfg = result.sae.cfg
            k = f"-k{cfg.k}" if cfg.k is not None else ""
            row = catalog.register_sae(
                s,
                sae_id=result.sae_id,
                name=one.name or f"{cfg.hook} {cfg.architecture}-{cfg.d_sae}{k}",
                model_name=cfg.model or "",
                hook_name=cfg.hook or "",
                hook_out_name=cfg.hook_out,
                architecture=cfg.architecture,
                d_in=cfg.d_in,
                d_sae=cfg.d_sae,
                k=cfg.k,
                cfg={
                    "train_spec": one.model_dump(mode="json"),
                    "extra": cfg.extra,
                    **({"sources": cfg.sources} if cfg.sources else {}),
                },
                metrics=dict(result.metrics),
                checkpoint_path=str(result.checkpoint),
                activation_set_id=one.activation_set,
            )
            row.core_eval = result.core_eval or None
        s.commit()
    return results


def _train_task(specs: list[TrainSpec], settings: Settings, box) -> list[dict]:
    """On a Ray worker: train, register in the catalog, return ids and metrics."""
    from saefeat.workers.ray_stage import report_to

    results = train_and_record(list(specs), settings=settings, progress=report_to(box))
    return [{"sae_id": r.sae_id, "metrics": r.metrics} for r in results]


def run_train_job(
    spec: TrainJobSpec, *, settings: Settings, progress: Progress | None, should_stop: ShouldStop
) -> JobOutcome:
    from saefeat.workers.ray_stage import run_on_ray
    from saefeat.workers.runtime import ensure_ray, gpus_available

    ids = spec.sae_ids()
    if already_trained(settings, ids):
        return JobOutcome(JobStatus.SUCCEEDED, f"already trained: {', '.join(ids)}", ids)
    ensure_ray(settings)
    opts = ray_options(spec, gpus_available())
    # In the task Ray shows only the GPU it gave (cuda:0 there): a spec's cuda:N picked
    # "a GPU", and which one is Ray's.
    device = "cuda" if opts["num_gpus"] else "cpu"
    specs = [s.model_copy(update={"device": device}) for s in spec.specs]
    out, starts = run_on_ray(_train_task, (specs, settings), opts,
                             progress=progress, should_stop=should_stop)  # fmt: skip
    resumed = [s - 1 for s in starts if s > 1]  # the trainer reports step+1
    note = f"resumed from checkpoint at step(s) {resumed}" if resumed else None
    return JobOutcome(JobStatus.SUCCEEDED, note, [o["sae_id"] for o in out])


ROUTE = Route(
    "/trainings",
    "Submit a training job: one TrainSpec, or a sweep {specs: [...]} on one set",
    "Needs the `jobs` scope. The training runs as a Ray task: `device` cuda asks for "
    "a GPU (422 when the cluster has none), cpu for none, auto for a GPU if there is "
    "one; `resources` asks for custom Ray resources. Each spec's activation set must "
    "be harvested and complete; `resume_from` is refused (a resubmitted or crashed "
    "training resumes from its own last checkpoint). A sweep reads each batch once.",
)
STAGE = Stage(build_train, train_makes, lambda settings, t: already_trained(settings, t.sae_ids()))
TRAIN = register_job_kind(
    JobKind("train", TrainJobSpec, run_train_job, ROUTE, "steps", admit=admit_train,
            ray_options=ray_options, stage=STAGE)
)  # fmt: skip
