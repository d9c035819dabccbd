"""The pipeline steps with their catalog bookkeeping: harvest -> train -> index.

Each function takes a typed spec and returns what it made; the CLI and the tests call
these. Each step's work and bookkeeping live with its job kind in workers/, which the
API's job runner runs on Ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack

from saefeat.config import Settings, get_settings
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec
from saefeat.training.trainer import TrainResult
from saefeat.workers.harvest import HarvestResult
from saefeat.workers.harvest_job import harvest_and_record
from saefeat.workers.index import IndexResult
from saefeat.workers.index_job import index_and_record
from saefeat.workers.job_progress import Progress, RunCallbacks
from saefeat.workers.train_job import train_and_record

__all__ = ["run_harvest", "run_index", "run_train"]


def run_harvest(
    spec: HarvestSpec, *, settings: Settings | None = None, **run: Unpack[RunCallbacks]
) -> HarvestResult:
    """Harvest (`run`: progress, should_stop) and record the set in the catalog."""
    return harvest_and_record(spec, settings=settings or get_settings(), **run)


def run_train(
    spec: TrainSpec | list[TrainSpec],
    *,
    settings: Settings | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainResult | list[TrainResult]:
    """Train one SAE, or a sweep (a list of specs sharing every batch read), and register
    each in the catalog."""
    specs = spec if isinstance(spec, list) else [spec]
    results = train_and_record(specs, settings=settings or get_settings(), progress=progress)
    return results if isinstance(spec, list) else results[0]


def run_index(
    spec: IndexSpec,
    *,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> IndexResult:
    return index_and_record(spec, settings=settings or get_settings(), progress=progress)
