"""Shuffled batches over the committed shards of an activation set.

An epoch visits every committed row exactly once (rows of contexts a commit record
lists as dropped are not served, nor the rows given as excluded (the massive-norm tokens
of exclusion.py's rule), nor contexts outside `contexts` when a split is asked for).
Shards are taken in a seeded random order, grouped into windows of `window_shards`, and
rows are permuted within a window, so a batch mixes several shards while memory stays at
about two windows. The plan of an epoch is pure index arithmetic, so a run resumes at
any batch without reading what it skips. A background thread reads ahead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from saefeat.storage.activations import ActivationSet


class ShuffledBatchReader:
    def __init__(
        self,
        aset: ActivationSet,
        hook: str,
        batch_size: int,
        *,
        seed: int = 0,
        window_shards: int = 4,
        skip_first_position: bool = True,
        excluded: np.ndarray | None = None,
        contexts: np.ndarray | None = None,
        prefetch: int = 4,
    ):
        """`excluded`: absolute rows to leave out (exclusion.excluded_rows; a multi-hook
        sweep passes the union over its hooks so the readers stay in lockstep);
        `contexts`: bool [n_contexts], serve only these."""
        self.aset, self.hook, self.batch_size = aset, hook, batch_size
        self.seed, self.window_shards, self.prefetch = seed, window_shards, prefetch
        self.skip_first_position = skip_first_position
        self.contexts = contexts
        self._excluded = excluded
        self.shards = aset.committed_shards()
        if not self.shards:
            raise ValueError(f"activation set {aset.id} has no committed shards")
        self._rows_per_shard = {s: self._kept_rows(s) for s in self.shards}
        self.rows_per_epoch = sum(len(r) for r in self._rows_per_shard.values())

    def _kept_rows(self, shard: int) -> np.ndarray:
        """Row offsets inside the shard that the reader serves (dropped contexts left out)."""
        rows = self.aset.kept_rows(shard, skip_first_position=self.skip_first_position)
        r0, _ = self.aset.shard_rows(shard)
        if self.contexts is not None:
            rows = rows[self.contexts[(r0 + rows) // self.aset.ctx_len]]
        if self._excluded is not None and len(self._excluded):
            rows = rows[~np.isin(r0 + rows, self._excluded)]
        return rows

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.rows_per_epoch // self.batch_size)

    def _epoch_plan(self, epoch: int) -> list[tuple[list[int], np.ndarray]]:
        """Windows of the epoch: (shards, permuted (shard slot, row) pairs as one array)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.shards[i] for i in rng.permutation(len(self.shards))]
        plan = []
        for w in range(0, len(order), self.window_shards):
            shards = order[w : w + self.window_shards]
            pairs = np.concatenate(
                [
                    np.stack([np.full(len(rows), slot), rows], axis=1)
                    for slot, rows in enumerate(self._rows_per_shard[s] for s in shards)
                ]
            )
            plan.append((shards, pairs[rng.permutation(len(pairs))]))
        return plan

    def iter_epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Batches of one epoch from `start_batch` on; float32 [<=batch_size, d]."""
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce():
            try:
                for batch in self._batches(epoch, start_batch):
                    while not stop.is_set():
                        try:
                            q.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as e:  # surface read errors in the consumer
                q.put(e)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _batches(self, epoch: int, start_batch: int) -> Iterator[torch.Tensor]:
        B = self.batch_size
        skip_rows = start_batch * B
        carry: torch.Tensor | None = None
        for shards, pairs in self._epoch_plan(epoch):
            if skip_rows >= len(pairs):  # the whole window lies before the resume point
                skip_rows -= len(pairs)
                continue
            pairs = pairs[skip_rows:]
            skip_rows = 0
            data = [self.aset.read_shard(s, self.hook) for s in shards]
            offsets = np.cumsum([0] + [d.shape[0] for d in data])
            rows = torch.cat(data)[torch.from_numpy(offsets[pairs[:, 0]] + pairs[:, 1])]
            if carry is not None:
                rows = torch.cat([carry, rows])
            n_full = rows.shape[0] // B
            for i in range(n_full):
                yield rows[i * B : (i + 1) * B]
            carry = rows[n_full * B :] if rows.shape[0] % B else None
        if carry is not None:
            yield carry

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = 0
        while True:
            yield from self.iter_epoch(epoch)
            epoch += 1
