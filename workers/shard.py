"""One harvest shard: run the model over its contexts, check the values, write, commit.

`ShardHarvester` is the body of the Ray actor in `workers/harvest.py` and, unchanged, a
single-process reference for tests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from saefeat.errors import SaefeatError
from saefeat.lm import auto_dtype, cached_model, run_to_hooks
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import ActivationSet

IN_FLIGHT = 2  # shards per harvester at once: one in the forward, one being written


class NonFiniteActivations(SaefeatError):
    """NaN/Inf activations under on_nonfinite="fail"."""


def model_dtype(spec: HarvestSpec, device: str) -> torch.dtype:
    return auto_dtype(device) if spec.model_dtype == "auto" else getattr(torch, spec.model_dtype)


class _PinnedPool:
    """Page-locked host buffers for one shard's rows per hook, reused across shards: a
    non-blocking device-to-host copy needs pinned memory, and pinning is slow."""

    def __init__(self):
        self._free: list[dict[str, torch.Tensor]] = []
        self._lock = threading.Lock()

    def take(self, hooks: list[str], rows: int, d: int, dtype: torch.dtype):
        with self._lock:
            for i, bufs in enumerate(self._free):
                if next(iter(bufs.values())).shape[0] >= rows:
                    return self._free.pop(i)
        return {h: torch.empty(rows, d, dtype=dtype, pin_memory=True) for h in hooks}

    def give(self, bufs: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._free.append(bufs)


class ShardHarvester:
    """Runs the model over one shard's contexts and writes the shard.

    Up to IN_FLIGHT shards run at once in separate threads (the Ray actor's concurrency):
    one enqueues its forwards while the other waits for its copies and writes."""

    def __init__(
        self,
        spec_json: str,
        set_path: str,
        device: str,
        threads: int | None = None,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.spec = HarvestSpec.model_validate_json(spec_json)
        self.device = device
        self.lm = cached_model(
            self.spec.model, self.spec.revision, device, model_dtype(self.spec, device)
        )
        self.points = self.lm.check_hooks(self.spec.hooks)
        self.aset = ActivationSet(Path(set_path))
        # One shard at a time puts its forwards on the device; a finished shard's copies
        # and write overlap the next shard's forwards. The forwards all run on this one
        # thread: the actor calls harvest_shard from IN_FLIGHT threads by turns, and on a
        # CPU each calling thread gets its own OpenMP team, which made the same forward
        # ~15% slower than from one thread (SmolLM2-135M, 2 cores; bench/RESULTS.md).
        # Other users of the process's cached model (a second in-process harvest, an
        # explain pool) take turns with it: run_to_hooks holds the model's lock per batch.
        self._forwards = ThreadPoolExecutor(
            1, "shard-forward", torch.set_num_threads if threads else None, (threads,)
        )
        self._cuda = self.lm.device.type == "cuda"
        # Told the rows of each batch once its forward is done (a harvest in one process
        # reports within a shard with it); None in a Ray actor.
        self.on_rows: Callable[[int], None] | None = None
        if self._cuda:
            self._copy_stream = torch.cuda.Stream(self.lm.device)
            self._pinned = _PinnedPool()

    def ready(self) -> bool:
        """Answers once the model is loaded: the driver's liveness probe when it stops
        its workers."""
        return True

    @torch.inference_mode()
    def _forward(self, tokens: torch.Tensor) -> _Forwarded:
        """Put one shard's forwards on the device; on CUDA nothing here waits for them."""
        B, d = self.spec.batch_size, self.lm.d_model
        n_ctx = tokens.shape[0]
        if not self._cuda:
            out: dict[str, list[torch.Tensor]] = {h: [] for h in self.spec.hooks}
            bad = torch.zeros(n_ctx, dtype=torch.bool)
            for b in range(0, n_ctx, B):
                acts = run_to_hooks(self.lm, tokens[b : b + B], self.points)
                bad[b : b + B] = _nonfinite(acts)
                for h, a in acts.items():
                    out[h].append(a.reshape(-1, d))
                if self.on_rows is not None:
                    self.on_rows(tokens[b : b + B].numel())
            rows = {h: v[0] if len(v) == 1 else torch.cat(v) for h, v in out.items()}
            return _Forwarded(rows, bad)
        # CUDA: the tokens go over once, without a host sync; each batch's rows are copied
        # to pinned memory on a side stream while the next batch's forward runs on the
        # compute stream; the NaN/Inf check runs on the device.
        n_rows = tokens.numel()
        host = self._pinned.take(self.spec.hooks, n_rows, d, self.lm.model.dtype)
        tokens = tokens.pin_memory().to(self.lm.device, non_blocking=True)
        compute = torch.cuda.current_stream(self.lm.device)
        copy = self._copy_stream
        bad = torch.zeros(n_ctx, dtype=torch.bool, device=self.lm.device)
        for b in range(0, n_ctx, B):
            acts = run_to_hooks(self.lm, tokens[b : b + B], self.points)
            bad[b : b + B] = _nonfinite(acts)
            done = compute.record_event()
            r0 = b * tokens.shape[1]
            with torch.cuda.stream(copy):
                copy.wait_event(done)
                for h, a in acts.items():
                    a.record_stream(copy)  # keep it alive until copied
                    rows = a.reshape(-1, d)
                    host[h][r0 : r0 + rows.shape[0]].copy_(rows, non_blocking=True)
        bad_host = torch.empty(n_ctx, dtype=torch.bool, pin_memory=True)
        with torch.cuda.stream(copy):
            copy.wait_stream(compute)
            bad.record_stream(copy)
            bad_host.copy_(bad, non_blocking=True)
            copied = copy.record_event()
        return _Forwarded({h: x[:n_rows] for h, x in host.items()}, bad_host, host, copied)

    def harvest_shard(self, shard: int) -> dict:
        c0, c1 = self.aset.shard_contexts(shard)
        tokens = torch.from_numpy(self.aset.tokens(c0, c1)).long()
        fwd = self._forwards.submit(self._forward, tokens).result()
        try:
            fwd.wait()  # off the forward thread: the next shard's forwards may already run
            dropped = [c0 + int(i) for i in fwd.bad.nonzero().flatten()]
            if dropped and self.spec.on_nonfinite == "fail":
                raise NonFiniteActivations(
                    f"NaN or Inf activations in {len(dropped)} context(s) of shard {shard} "
                    f"(first: context {dropped[0]}); the shard was not committed. Use "
                    "on_nonfinite='drop' to leave such contexts out",
                    field="on_nonfinite",
                )
            L = self.aset.ctx_len
            with torch.inference_mode():  # the rows may be inference tensors
                for c in dropped:  # zeros keep the shard whole; the commit record lists them
                    for x in fwd.rows.values():
                        x[(c - c0) * L : (c - c0 + 1) * L] = 0
            return self.aset.write_shard(shard, fwd.rows, dropped).__dict__
        finally:
            if fwd.host is not None:
                fwd.wait()  # a pinned buffer goes back only once no copy writes into it
                self._pinned.give(fwd.host)


def _nonfinite(acts: dict[str, torch.Tensor]) -> torch.Tensor:
    """[batch] bool: contexts with a NaN or Inf at any hook."""
    bad = None
    for a in acts.values():
        b = ~torch.isfinite(a).flatten(1).all(dim=1)
        bad = b if bad is None else bad | b
    return bad


@dataclass
class _Forwarded:
    """One shard's forwards: rows [n_contexts * ctx_len, d] per hook and the NaN/Inf
    mask [n_contexts] on the host, valid once wait() returns; the pinned buffers used."""

    rows: dict[str, torch.Tensor]
    bad: torch.Tensor
    host: dict[str, torch.Tensor] | None = None
    copied: torch.cuda.Event | None = None

    def wait(self) -> None:
        if self.copied is not None:
            self.copied.synchronize()
