"""What a spec sent over HTTP may ask of the server: corpus paths under the corpus roots,
a model from the local cache or the allow-list, sizes within the settings' limits, and a
device and worker count the cluster has.

The API checks a spec here before it writes a job row; each refusal is a SpecError that
names the field (422). The CLI does not: its user owns the machine (docs/SECURITY.md).
The harvest itself checks the corpus paths again when it opens them (saefeat/corpus.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from saefeat.config import Settings
from saefeat.errors import SpecError
from saefeat.lm import EMBEDDED_MODEL
from saefeat.paths import BUILTIN_PYTHON_DOCS, CorpusRoots
from saefeat.specs import HarvestSpec

DEVICE = re.compile(r"cpu|cuda(?::(\d{1,3}))?")


@dataclass(frozen=True)
class Resources:
    """What the cluster has in all: a job asking for more can never be scheduled."""

    cpus: int
    gpus: int


def cluster_resources(settings: Settings) -> Resources | None:
    """The joined Ray cluster's totals; before Ray is up, the local machine (a local Ray
    gets every CPU and GPU); None for a remote cluster not joined yet (its scheduler
    then refuses what it cannot place)."""
    import ray

    if ray.is_initialized():
        total = ray.cluster_resources()
        return Resources(int(total.get("CPU", 0)), int(total.get("GPU", 0)))
    if settings.ray_address:
        return None
    import torch

    return Resources(os.cpu_count() or 1, torch.cuda.device_count())


def admit_harvest(spec: HarvestSpec, settings: Settings) -> None:
    roots = CorpusRoots.of(settings.corpus_root_paths)
    for i, src in enumerate(spec.corpus):
        if src.path != BUILTIN_PYTHON_DOCS:
            roots.resolve(src.path, field=f"corpus.{i}.path")
    check_model(spec.model, settings)
    _at_most(spec.ctx_len, settings.max_ctx_len, "ctx_len")
    _at_most(spec.token_budget, settings.max_token_budget, "token_budget")
    _at_most(spec.batch_size, settings.max_batch_size, "batch_size")
    check_device(spec.device, spec.workers, cluster_resources(settings))


def _at_most(value: int, limit: int, field: str) -> None:
    if value > limit:
        raise SpecError(f"{value} is over this server's limit of {limit}", field=field)


def check_model(model: str, settings: Settings) -> None:
    """The embedded model, an id or path in `allowed_models`, or a model folder (or .gguf
    file) under `models_dir`. Missing and forbidden paths get the same answer."""
    if model == EMBEDDED_MODEL or model in settings.allowed_models:
        return
    path = Path(model).expanduser()
    if path.is_absolute():
        try:
            path = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            path = Path("/nonexistent")
        cache = settings.models_dir.resolve()
        listed = {Path(m).expanduser().resolve() for m in settings.allowed_models
                  if Path(m).expanduser().is_absolute()}  # fmt: skip
        if path.exists() and (cache in path.parents or path in listed):
            return
    raise SpecError(
        f"model {model!r} is not one this server offers: use {EMBEDDED_MODEL!r}, a model "
        f"folder under the model cache ({settings.models_dir}), or one of allowed_models "
        f"({', '.join(settings.allowed_models) or 'none set'})",
        field="model",
    )


def check_device(device: str | None, workers: int | None, res: Resources | None) -> None:
    """`cpu`, `cuda` or `cuda:N` with N a GPU the cluster has; at most one worker per GPU
    (device cuda) or per CPU (device cpu). No device means what the harvest picks: cuda
    when the cluster has GPUs."""
    match = DEVICE.fullmatch(device) if device is not None else None
    if device is not None and match is None:
        raise SpecError(
            f"{device!r} is not a device: use 'cpu', 'cuda' or 'cuda:N'", field="device"
        )
    if res is None:
        return
    on_gpu = device.startswith("cuda") if device is not None else res.gpus > 0
    if on_gpu:
        if res.gpus == 0:
            raise SpecError(f"{device!r} needs a GPU and the cluster has none", field="device")
        if match and match.group(1) is not None and int(match.group(1)) >= res.gpus:
            raise SpecError(
                f"{device!r} does not exist: the cluster has {res.gpus} GPU(s), "
                f"cuda:0..cuda:{res.gpus - 1}",
                field="device",
            )
    have, unit = (res.gpus, "GPU") if on_gpu else (res.cpus, "CPU")
    if workers is not None and workers > have:
        raise SpecError(
            f"{workers} workers cannot all be placed: one needs a {unit} and the cluster "
            f"has {have}",
            field="workers",
        )
