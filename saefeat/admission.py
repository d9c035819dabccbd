"""What a spec sent over HTTP may ask of the server: corpus paths under the corpus roots,
a model from the local cache or the allow-list (a harvest's paired model too, sharing the
model's tokenizer), sizes within the settings' limits, and a device and worker count the
cluster has.

The API checks a spec before it writes a job row, with the check its job kind names
(workers/job_kinds.py); each refusal is a SpecError that names the field (422). The CLI
does not: its user owns the machine (docs/SECURITY.md).
The harvest itself checks the corpus paths again when it opens them (saefeat/corpus.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saefeat.config import Settings
from saefeat.devices import on_gpu, pick_device
from saefeat.errors import SpecError
from saefeat.lm import EMBEDDED_MODEL
from saefeat.pairing import check_pairing
from saefeat.paths import BUILTIN_PYTHON_DOCS, CorpusRoots
from saefeat.specs import (
    ContrastSpec,
    CorpusSource,
    HarvestSpec,
    IndexSpec,
    TrainJobSpec,
    TrainSpec,
)

DEVICE = re.compile(r"cpu|cuda(?::(\d{1,3}))?")


@dataclass(frozen=True)
class Admission:
    """What a check may look at. `pending`: what earlier stages of the same pipeline will
    make (activation_set, sae), so a check skips the inputs that do not exist yet."""

    settings: Settings
    session: Any = None  # a catalog Session, for kinds whose inputs are catalog rows
    pending: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Resources:
    """What the cluster has in all: a job asking for more can never be scheduled."""

    cpus: int
    gpus: int
    custom: dict[str, float] | None = None  # other Ray resources; None: not known yet


def cluster_resources(settings: Settings) -> Resources | None:
    """The joined Ray cluster's totals; before Ray is up, the local machine (a local Ray
    gets every CPU and GPU); None for a remote cluster not joined yet (its scheduler
    then refuses what it cannot place)."""
    import ray

    if ray.is_initialized():
        total = ray.cluster_resources()
        custom = {k: v for k, v in total.items() if k not in ("CPU", "GPU")}
        return Resources(int(total.get("CPU", 0)), int(total.get("GPU", 0)), custom)
    if settings.ray_address:
        return None
    import torch

    return Resources(os.cpu_count() or 1, torch.cuda.device_count())


def admit_harvest(spec: HarvestSpec, ctx: Admission) -> None:
    settings = ctx.settings
    _admit_corpus(spec.corpus, settings, "corpus")
    check_model(spec.model, settings)
    _at_most(spec.ctx_len, settings.max_ctx_len, "ctx_len")
    _at_most(spec.token_budget, settings.max_token_budget, "token_budget")
    _at_most(spec.batch_size, settings.max_batch_size, "batch_size")
    check_device(spec.device, spec.workers, cluster_resources(settings))
    _admit_layers(spec, spec.model, spec.revision, "hooks")
    _admit_paired_model(spec, settings)
    if spec.paired_model is not None:
        _admit_layers(spec, spec.paired_model, spec.paired_revision, "paired_model")


def _admit_layers(spec: HarvestSpec, model: str, revision: str | None, field: str) -> None:
    """Each hook's layer is one `model` has (its config read, not its weights); a model
    whose config cannot be read is left to the job, which names what is wrong."""
    from saefeat.lm import model_config_and_tokenizer, parse_hook

    try:
        config, _ = model_config_and_tokenizer(model, revision)
    except SpecError:
        return
    n = getattr(config, "num_hidden_layers", None)
    for hook in spec.hooks:
        if n is not None and parse_hook(hook).layer >= n:
            raise SpecError(f"{hook}: layer {parse_hook(hook).layer} does not exist; "
                            f"{model} has layers 0..{n - 1}", field=field)  # fmt: skip


def _admit_paired_model(spec: HarvestSpec, settings: Settings) -> None:
    """A paired model (model diffing) the server offers, as `model` must be, and then
    (its config and tokenizer read, never its weights) one sharing the model's
    tokenizer: saefeat/pairing.py."""
    if spec.paired_model is None:
        return
    try:
        check_model(spec.paired_model, settings)
    except SpecError as e:
        raise SpecError(e.message, field="paired_model") from None
    check_pairing(spec)


def _admit_corpus(corpus: list[CorpusSource], settings: Settings, field: str) -> None:
    """Each path under the corpus roots, and each file in a folder too (a symlink that
    points out), as the harvest will find them: refused now, not after the job queued."""
    roots = CorpusRoots.of(settings.corpus_root_paths)
    for i, src in enumerate(corpus):
        if src.path != BUILTIN_PYTHON_DOCS:
            roots.resolve_tree(src.path, field=f"{field}.{i}.path")


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
    gpu = on_gpu(pick_device(device, res.gpus))
    if gpu:
        if res.gpus == 0:
            raise SpecError(f"{device!r} needs a GPU and the cluster has none", field="device")
        if match and match.group(1) is not None and int(match.group(1)) >= res.gpus:
            raise SpecError(
                f"{device!r} does not exist: the cluster has {res.gpus} GPU(s), "
                f"cuda:0..cuda:{res.gpus - 1}",
                field="device",
            )
    have, unit = (res.gpus, "GPU") if gpu else (res.cpus, "CPU")
    if workers is not None and workers > have:
        raise SpecError(
            f"{workers} workers cannot all be placed: one needs a {unit} and the cluster "
            f"has {have} {unit}(s) in all",
            field="workers",
        )


def admit_train(job: TrainJobSpec, ctx: Admission) -> None:
    """Every spec's set harvested and complete with its hook (unless an earlier stage
    makes it), its eval_set too and of the same kind, no `resume_from` (training resumes
    from its own state; a path would reach anywhere on the server), a device the cluster
    has that agrees with the job's, and a placement the cluster can satisfy."""
    res = cluster_resources(ctx.settings)
    placed = job.device  # the side the task runs on, once a spec or the job names one
    for i, spec in enumerate(job.specs):
        where = f"specs.{i}."
        _no_resume(spec, where)
        aset = None
        if "activation_set" not in ctx.pending:
            aset = _admit_set(spec.activation_set, ctx.settings, f"{where}activation_set")
            _admit_hook(spec, aset, where)
            _admit_sources(spec, aset, ctx.settings, where)
        if spec.eval_set is not None:
            other = _admit_set(spec.eval_set, ctx.settings, f"{where}eval_set")
            if aset is not None:
                _admit_eval_set(aset, other, spec.hook or aset.hooks[0], f"{where}eval_set")
        _admit_spec_device(spec.device, placed, res, f"{where}device")
        if placed == "auto" and spec.device not in (None, "auto"):
            placed = "cuda" if on_gpu(spec.device) else "cpu"
    check_placement(job.device, job.resources, res)


def _no_resume(spec: TrainSpec, field: str) -> None:
    if spec.resume_from is not None:
        raise SpecError("not accepted over HTTP: a training resumes from its own checkpoint "
                        "when resubmitted", field=f"{field}resume_from")  # fmt: skip


def _admit_set(set_id: str, settings: Settings, field: str):
    """The complete activation set `set_id` (an id: it is looked up in this server's
    activations folder only)."""
    from saefeat.storage.activations import STATUS_COMPLETE, open_set

    try:
        aset = open_set(settings.activations_dir, set_id)
    except Exception:  # missing or unreadable: the same answer
        aset = None
    if aset is None or aset.status != STATUS_COMPLETE:
        state = "does not exist" if aset is None else f"is {aset.status}, not complete"
        raise SpecError(f"activation set {set_id!r} {state}; harvest it first "
                        "(POST /v1/harvests)", field=field)  # fmt: skip
    return aset


def _admit_hook(spec: TrainSpec, aset, field: str) -> None:
    """The hook it reads, and a transcoder's output hook, are the set's."""
    for name in ("hook", "hook_out"):
        hook = getattr(spec, name)
        if hook is not None and hook not in aset.hooks:
            raise SpecError(f"{name} {hook!r} is not in set {aset.id} (it has {aset.hooks})",
                            field=f"{field}{name}")  # fmt: skip


def _admit_sources(spec: TrainSpec, aset, settings: Settings, field: str) -> None:
    """A crosscoder's sets complete, with their hooks, holding the set's tokens."""
    if not spec.sources:
        return
    from saefeat.training.sources import open_sources

    try:
        open_sources(settings, spec, aset)
    except SpecError as e:
        raise SpecError(e.message, field=f"{field}{e.field}") from None


def _admit_eval_set(aset, other, hook: str, field: str) -> None:
    """The trainer's own check (same model, revision, width and hook), before the job."""
    from saefeat.training.heldout import check_eval_set

    try:
        check_eval_set(aset, other, hook)
    except SpecError as e:
        raise SpecError(e.message, field=field) from None


def _admit_spec_device(device: str | None, placed: str, res: Resources | None,
                       field: str) -> None:  # fmt: skip
    """A spec's own device: one the cluster has, on the side (GPU or CPU) where the
    training task is `placed` (run_train_job runs every spec of a sweep there)."""
    if device is None or device == "auto":
        return
    try:
        check_device(device, None, res)
    except SpecError as e:
        raise SpecError(e.message, field=field) from None
    if placed != "auto" and on_gpu(device) != (placed == "cuda"):
        raise SpecError(f"{device!r} disagrees with {placed!r}, the device of the job or of "
                        "an earlier spec: one task trains a sweep, on one device",
                        field=field)  # fmt: skip


def check_placement(
    device: str, resources: dict[str, float], res: Resources | None, field: str = ""
) -> None:
    """`cuda` needs a GPU in the cluster; each custom resource must exist there in the
    amount asked (a task asking for more could never be scheduled)."""
    for name, amount in resources.items():
        where = f"{field}resources.{name}"
        if name in ("CPU", "GPU"):  # Ray refuses them in `resources`, at run time
            have = None if res is None else res.cpus if name == "CPU" else res.gpus
            total = "" if have is None else f" (the cluster has {have} {name}(s) in all)"
            raise SpecError(f"{name} is not a custom resource: the training task takes one "
                            f"CPU, and `device` asks for a GPU{total}", field=where)  # fmt: skip
        if amount <= 0:
            raise SpecError(f"is {amount}; a resource amount is more than 0", field=where)
    if res is None:
        return
    if device == "cuda" and res.gpus == 0:
        raise SpecError("'cuda' needs a GPU and the cluster has none; use 'auto' or 'cpu'",
                        field=f"{field}device")  # fmt: skip
    for name, amount in resources.items():
        if res.custom is not None and amount > res.custom.get(name, 0.0):
            raise SpecError(f"{amount:g} of resource {name!r} cannot be placed: the cluster "
                            f"has {res.custom.get(name, 0.0):g} in all",
                            field=f"{field}resources.{name}")  # fmt: skip


def admit_index(spec: IndexSpec, ctx: Admission) -> None:
    trained = (ctx.settings.saes_dir / spec.sae / "metrics.json").is_file()
    if "sae" not in ctx.pending and not trained:
        raise SpecError(f"no trained SAE {spec.sae!r}; train it first (POST /v1/trainings)",
                        field="sae")  # fmt: skip
    admit_device(spec.device, ctx)


def admit_contrast(spec: ContrastSpec, ctx: Admission) -> None:
    """A ContrastSpec's device, and for a side given as text sources its paths under the
    corpus roots and the harvest's token budget; the sets, the SAE and the documents per
    side are analysis.contrast.check_inputs's (which reads the corpora: after this).
    The harvest runs the SAE's own model, one the server holds already."""
    admit_device(spec.device, ctx)
    for side in spec.corpus_sides():
        _admit_corpus(getattr(spec, f"{side}_corpus"), ctx.settings, f"{side}_corpus")
    if spec.corpus_sides():
        _at_most(spec.token_budget, ctx.settings.max_token_budget, "token_budget")


def admit_device(device: str | None, ctx: Admission) -> None:
    """A device the cluster lacks would leave the job waiting for it forever."""
    if device is not None:
        check_device(device, None, cluster_resources(ctx.settings))
