"""The harvest: tokenize and pack the corpus, then Ray actors fill the set shard by shard.

Each actor loads the model once and pulls shards; it runs the forward only up to the
deepest hooked layer, writes the shard's rows for every hook, fsyncs, and commits.
Actors restart when their process dies and the interrupted shard runs again; a shard
is only visible once committed, so nothing is ever counted twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from saefeat.config import Settings, get_settings
from saefeat.corpus import CorpusReport, iter_documents, pack_contexts
from saefeat.errors import SaefeatError, SpecError
from saefeat.lm import (
    auto_dtype,
    cached_model,
    model_config_and_tokenizer,
    parse_hook,
    run_to_hooks,
)
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import STATUS_COMPLETE, ActivationSet
from saefeat.storage.stats import set_statistics
from saefeat.workers.runtime import cpus_available, ensure_ray, gpus_available

Progress = Callable[[int, int], None]  # (tokens done, tokens total)


def model_dtype(spec: HarvestSpec, device: str) -> torch.dtype:
    if spec.model_dtype == "auto":
        return auto_dtype(device)
    return getattr(torch, spec.model_dtype)


class ShardHarvester:
    """Runs the model over one shard's contexts and writes the shard. Used in a Ray actor
    and, unchanged, in-process by tests that need a single-process reference."""

    def __init__(self, spec_json: str, set_path: str, device: str, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.spec = HarvestSpec.model_validate_json(spec_json)
        self.device = device
        self.lm = cached_model(self.spec.model, device, model_dtype(self.spec, device))
        self.points = self.lm.check_hooks(self.spec.hooks)
        self.aset = ActivationSet(Path(set_path))
        # Forwards run one at a time; a finished shard's write overlaps the next forward.
        self._forward_lock = threading.Lock()

    def harvest_shard(self, shard: int) -> dict:
        c0, c1 = self.aset.shard_contexts(shard)
        tokens = torch.from_numpy(self.aset.tokens(c0, c1)).long()
        out: dict[str, list[torch.Tensor]] = {h: [] for h in self.spec.hooks}
        with self._forward_lock:
            for b in range(0, tokens.shape[0], self.spec.batch_size):
                acts = run_to_hooks(self.lm, tokens[b : b + self.spec.batch_size], self.points)
                for h, a in acts.items():
                    out[h].append(a.to("cpu", non_blocking=True))
        rows = {h: torch.cat(v).reshape(-1, self.lm.d_model) for h, v in out.items()}
        for h, x in rows.items():
            if not torch.isfinite(x).all():
                bad = (~torch.isfinite(x).all(dim=1)).nonzero()[0].item() // self.aset.ctx_len
                raise ValueError(
                    f"NaN or Inf activations at {h} in context {c0 + bad} (shard {shard}); "
                    "the shard was not committed"
                )
        commit = self.aset.write_shard(shard, rows)
        return commit.__dict__


HarvestWorker = ray.remote(max_restarts=-1, max_task_retries=3, max_concurrency=2)(
    ShardHarvester
)


@dataclass
class HarvestResult:
    activation_set: ActivationSet
    reused: bool
    shards_run: int
    seconds: float
    report: CorpusReport | None


def prepare_set(spec: HarvestSpec, root: Path) -> tuple[ActivationSet, CorpusReport | None]:
    """Open the set this spec names, or tokenize the corpus and create it."""
    path = root / f"{spec.set_id()}.zarr"
    if (path / "zarr.json").is_file():
        return ActivationSet(path), None
    config, tokenizer = model_config_and_tokenizer(spec.model, spec.revision)
    n_layers = config.num_hidden_layers
    for h in spec.hooks:
        p = parse_hook(h)
        if p.layer >= n_layers:
            raise SpecError(
                f"{h}: layer {p.layer} does not exist; {spec.model} has layers 0..{n_layers - 1}",
                field="hooks",
            )
    report = CorpusReport()
    docs = (
        d for src in spec.corpus for d in iter_documents(src.path, field=src.field, report=report)
    )
    packed = pack_contexts(
        docs,
        tokenizer,
        ctx_len=spec.ctx_len,
        token_budget=spec.token_budget,
        bos=spec.bos,
        report=report,
    )
    root.mkdir(parents=True, exist_ok=True)
    aset = ActivationSet.create(
        path,
        set_id=spec.set_id(),
        spec=spec.model_dump(mode="json"),
        model=spec.model,
        hooks=list(spec.hooks),
        d_model=config.hidden_size,
        tokens=packed.tokens,
        doc_index=packed.doc_index,
        doc_offset=packed.doc_offset,
        doc_ids=packed.doc_ids,
        contexts_per_shard=spec.contexts_per_shard,
        storage_dtype=spec.storage_dtype,
    )
    return aset, report


def harvest(
    spec: HarvestSpec,
    *,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> HarvestResult:
    """Run (or resume, or reuse) the harvest this spec describes."""
    settings = settings or get_settings()
    t0 = time.perf_counter()
    aset, report = prepare_set(spec, settings.activations_dir)
    if aset.status == STATUS_COMPLETE:
        return HarvestResult(aset, True, 0, 0.0, report)
    pending = aset.uncommitted_shards()
    if pending:
        _run_shards(spec, aset, pending, settings, progress)
    aset.mark_complete(set_statistics(aset))
    return HarvestResult(aset, False, len(pending), time.perf_counter() - t0, report)


def _get(ref):
    """ray.get, re-raising our own errors from a worker as themselves."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, SaefeatError | ValueError):
            raise e.cause from None
        raise


def _run_shards(
    spec: HarvestSpec,
    aset: ActivationSet,
    shards: list[int],
    settings: Settings,
    progress: Progress | None,
) -> None:
    ensure_ray(settings)
    n_gpus = gpus_available()
    device = spec.device or ("cuda" if n_gpus else "cpu")
    default_workers = max(1, n_gpus) if device.startswith("cuda") else 1
    n_workers = min(spec.workers or default_workers, len(shards))
    threads = max(1, cpus_available() // n_workers)
    options = {"num_gpus": 1} if device.startswith("cuda") else {"num_cpus": threads}
    workers = [
        HarvestWorker.options(**options).remote(
            spec.model_dump_json(), str(aset.path), device, threads
        )
        for _ in range(n_workers)
    ]
    total = aset.n_tokens
    done = sum(aset.shard_rows(s)[1] - aset.shard_rows(s)[0] for s in aset.committed_shards())
    if progress:
        progress(done, total)
    queue = list(shards)
    # Two shards in flight per actor: one in its forward, one being written.
    in_flight: dict = {}
    for w in workers:
        for _ in range(2):
            if queue:
                in_flight[w.harvest_shard.remote(queue.pop(0))] = w
    try:
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            w = in_flight.pop(ref)
            commit = _get(ref)
            done += commit["rows"]
            if progress:
                progress(done, total)
            if queue:
                in_flight[w.harvest_shard.remote(queue.pop(0))] = w
    finally:
        for ref in in_flight:
            ray.cancel(ref)
        for w in workers:
            ray.kill(w)
