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

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saefeat.config import Settings
from saefeat.specs import TrainSpec
from saefeat.workers.job_kinds import JobKind, JobOutcome, Progress, register_job_kind

if TYPE_CHECKING:
    from saefeat.training.trainer import TrainResult

Device = Literal["auto", "cpu", "cuda"]


class TrainJobSpec(BaseModel):
    """A sweep of TrainSpecs on one activation set, and where to run it. A bare TrainSpec
    is taken as a sweep of one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specs: list[TrainSpec] = Field(min_length=1, max_length=64)
    device: Device = Field("auto", description="cuda: a GPU or 422; cpu; auto: GPU if any")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources the training task needs"
    )

    @model_validator(mode="before")
    @classmethod
    def _one_spec(cls, data: Any) -> Any:
        if isinstance(data, dict) and "specs" not in data and "activation_set" in data:
            return {"specs": [data]}
        return data

    def sae_ids(self) -> list[str]:
        from saefeat.training.trainer import sae_id_for

        return [sae_id_for(s, s.activation_set) for s in self.specs]

    def work_hash(self) -> str:
        return "train-" + hashlib.sha256(",".join(sorted(self.sae_ids())).encode()).hexdigest()[:16]


def ray_options(spec: TrainJobSpec, cluster_gpus: int) -> tuple[str, dict[str, Any]]:
    """(the torch device, the Ray task options) for this spec on a cluster with that
    many GPUs; admission has refused a cuda spec on a cluster without one."""
    on_gpu = spec.device == "cuda" or (spec.device == "auto" and cluster_gpus > 0)
    opts: dict[str, Any] = {"num_gpus": 1 if on_gpu else 0, "num_cpus": 1}
    if spec.resources:
        opts["resources"] = dict(spec.resources)
    return ("cuda" if on_gpu else "cpu"), opts


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
                architecture=cfg.architecture,
                d_in=cfg.d_in,
                d_sae=cfg.d_sae,
                k=cfg.k,
                cfg={"train_spec": one.model_dump(mode="json"), "extra": cfg.extra},
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
    spec: TrainJobSpec,
    *,
    settings: Settings,
    progress: Progress | None,
    should_stop: Callable[[], bool],
) -> JobOutcome:
    from saefeat.workers.ray_stage import run_on_ray
    from saefeat.workers.runtime import gpus_available

    ids = spec.sae_ids()
    if already_trained(settings, ids):
        return JobOutcome("succeeded", f"already trained: {', '.join(ids)}", ids)
    device, opts = ray_options(spec, gpus_available())
    specs = [s.model_copy(update={"device": device}) for s in spec.specs]
    out, starts = run_on_ray(_train_task, (specs, settings), opts,
                             progress=progress, should_stop=should_stop)  # fmt: skip
    resumed = [s - 1 for s in starts if s > 1]  # the trainer reports step+1
    note = f"resumed from checkpoint at step(s) {resumed}" if resumed else None
    return JobOutcome("succeeded", note, [o["sae_id"] for o in out])


TRAIN = register_job_kind(
    JobKind(
        name="train", spec_type=TrainJobSpec, spec_hash=TrainJobSpec.work_hash, run=run_train_job
    )  # fmt: skip
)
