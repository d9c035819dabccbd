"""The pipeline steps with their catalog bookkeeping: harvest -> train -> index.

Each function takes a typed spec and returns what it made; the CLI, the API's job
runner and the tests all call these.
"""

from __future__ import annotations

from collections.abc import Callable

from saefeat.config import Settings, get_settings
from saefeat.errors import NotFoundError
from saefeat.sae import read_config
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec
from saefeat.storage import catalog
from saefeat.storage.catalog.db import catalog_session, catalog_sessions
from saefeat.training.trainer import TrainResult, open_complete_set, train_sweep
from saefeat.workers.harvest import HarvestResult
from saefeat.workers.harvest_job import harvest_and_record
from saefeat.workers.index import IndexResult, index_sae

__all__ = ["catalog_session", "catalog_sessions", "run_harvest", "run_index", "run_train"]


def run_harvest(
    spec: HarvestSpec,
    *,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HarvestResult:
    return harvest_and_record(spec, settings=settings or get_settings(), progress=progress,
                              should_stop=should_stop)  # fmt: skip


def run_train(
    spec: TrainSpec | list[TrainSpec],
    *,
    settings: Settings | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult | list[TrainResult]:
    """Train one SAE, or a sweep (a list of specs sharing every batch read), and register
    each with its held-out metrics (FVU on typical and on all tokens, MSE, L0, dead/dense,
    density histogram, CE/KL, excluded-token counts) and its SAEBench core record in the
    catalog."""
    settings = settings or get_settings()
    specs = spec if isinstance(spec, list) else [spec]
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
    return results if isinstance(spec, list) else results[0]


def run_index(
    spec: IndexSpec,
    *,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IndexResult:
    settings = settings or get_settings()
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
