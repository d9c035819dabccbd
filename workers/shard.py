"""One harvest shard: run the model over its contexts, check the values, write, commit.

`ShardHarvester` is the body of the Ray actor in `workers/harvest.py` and, unchanged, a
single-process reference for tests.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from saefeat.errors import SaefeatError
from saefeat.lm import auto_dtype, cached_model, run_to_hooks
from saefeat.specs import HarvestSpec
from saefeat.storage.activations import ActivationSet


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
    """Runs the model over one shard's contexts and writes the shard."""

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
        self.lm = cached_model(self.spec.model, device, model_dtype(self.spec, device))
        self.points = self.lm.check_hooks(self.spec.hooks)
        self.aset = ActivationSet(Path(set_path))
        # Forwards run one at a time; a finished shard's write overlaps the next forward.
        self._forward_lock = threading.Lock()
        self._cuda = torch.cuda.is_available() and str(device).startswith("cuda")
        if self._cuda:
            self._copy_stream = torch.cuda.Stream()
            self._pinned = _PinnedPool()

    def ready(self) -> bool:
        """Answers once the model is loaded: lets the driver time start-up apart."""
        return True

    def _forward(self, tokens: torch.Tensor):
        """(rows [n_contexts * ctx_len, d] per hook on the host, the pinned buffers used
        or None)."""
        B, d = self.spec.batch_size, self.lm.d_model
        if not self._cuda:
            out: dict[str, list[torch.Tensor]] = {h: [] for h in self.spec.hooks}
            for b in range(0, tokens.shape[0], B):
                for h, a in run_to_hooks(self.lm, tokens[b : b + B], self.points).items():
                    out[h].append(a.reshape(-1, d))
            return {h: v[0] if len(v) == 1 else torch.cat(v) for h, v in out.items()}, None
        # CUDA: copy each batch to pinned memory on a side stream while the next batch's
        # forward runs on the compute stream.
        n_rows = tokens.numel()
        host = self._pinned.take(self.spec.hooks, n_rows, d, self.lm.model.dtype)
        compute = torch.cuda.current_stream()
        for b in range(0, tokens.shape[0], B):
            acts = run_to_hooks(self.lm, tokens[b : b + B], self.points)
            done = compute.record_event()
            r0 = b * tokens.shape[1]
            with torch.cuda.stream(self._copy_stream):
                self._copy_stream.wait_event(done)
                for h, a in acts.items():
                    a.record_stream(self._copy_stream)  # keep it alive until copied
                    rows = a.reshape(-1, d)
                    host[h][r0 : r0 + rows.shape[0]].copy_(rows, non_blocking=True)
        self._copy_stream.synchronize()
        return {h: x[:n_rows] for h, x in host.items()}, host

    def _nonfinite_contexts(self, rows: dict[str, torch.Tensor], c0: int) -> list[int]:
        n_ctx = next(iter(rows.values())).shape[0] // self.aset.ctx_len
        bad = torch.zeros(n_ctx, dtype=torch.bool)
        for x in rows.values():
            bad |= ~torch.isfinite(x.reshape(n_ctx, -1)).all(dim=1)
        return [c0 + int(i) for i in bad.nonzero().flatten()]

    def harvest_shard(self, shard: int) -> dict:
        c0, c1 = self.aset.shard_contexts(shard)
        tokens = torch.from_numpy(self.aset.tokens(c0, c1)).long()
        with self._forward_lock:
            rows, host = self._forward(tokens)
        try:
            dropped = self._nonfinite_contexts(rows, c0)
            if dropped and self.spec.on_nonfinite == "fail":
                raise NonFiniteActivations(
                    f"NaN or Inf activations in {len(dropped)} context(s) of shard {shard} "
                    f"(first: context {dropped[0]}); the shard was not committed. Use "
                    "on_nonfinite='drop' to leave such contexts out",
                    field="on_nonfinite",
                )
            L = self.aset.ctx_len
            for c in dropped:  # zeros keep the shard whole; the commit record lists them
                for x in rows.values():
                    x[(c - c0) * L : (c - c0 + 1) * L] = 0
            return self.aset.write_shard(shard, rows, dropped).__dict__
        finally:
            if host is not None:
                self._pinned.give(host)
