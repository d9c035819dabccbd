"""Run an SAE over an activation set and count, per document, where each feature fires.

Ray tasks take slices of the committed shards (as indexing does) and encode them with
the indexing path (`workers.index.encoded_batches`); each returns sparse
[documents, d_sae] tables that the driver adds up into a `SideCounts`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import scipy.sparse as sp
import torch

from saefeat.analysis.contrast_docs import DocumentLayout, document_layout
from saefeat.analysis.contrast_stats import SideCounts
from saefeat.config import Settings
from saefeat.sae import load_sae
from saefeat.storage.activations import ActivationSet
from saefeat.workers.index import encoded_batches
from saefeat.workers.runtime import cpus_available, ensure_ray, gpus_available


class ContrastCancelled(Exception):
    """should_stop() asked the contrast to stop."""


Tables = tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]


def count_shards(
    sae_path: str,
    set_path: str,
    shards: list[int],
    layout: DocumentLayout,
    batch_contexts: int,
    device: str,
) -> Tables:
    """(firing counts, activation sums, window firing) per [document, feature]."""
    sae = load_sae(Path(sae_path), device)
    aset = ActivationSet(Path(set_path))
    units, feats, acts, wins = [], [], [], []
    with torch.inference_mode():
        for s in shards:
            for row, vals, idx in encoded_batches(sae, aset, s, batch_contexts, device):
                rows = np.arange(row, row + vals.shape[0])
                vals, idx = vals.float().cpu().numpy(), idx.cpu().numpy()
                fired = (vals > 0) & layout.counted[rows][:, None]
                r, j = np.nonzero(fired)
                units.append(layout.unit[rows[r]])
                feats.append(idx[r, j])
                acts.append(vals[r, j])
                wins.append(layout.in_window[rows[r]])
    shape = (layout.n_units, sae.cfg.d_sae)
    u = np.concatenate(units) if units else np.zeros(0, np.int32)
    f = np.concatenate(feats) if feats else np.zeros(0, np.int64)
    a = np.concatenate(acts) if acts else np.zeros(0, np.float32)
    w = np.concatenate(wins) if wins else np.zeros(0, bool)

    def table(data, keep=slice(None)) -> sp.csr_matrix:
        return sp.csr_matrix((data, (u[keep], f[keep])), shape=shape)  # duplicates add up

    return (
        table(np.ones(len(u), np.float64)),
        table(a.astype(np.float64)),
        table(np.ones(int(w.sum()), np.float64), w),
    )


_count_task = ray.remote(max_retries=3)(count_shards)


def count_sides(
    sae_path: Path,
    sets: list[ActivationSet],
    *,
    window: int,
    batch_contexts: int,
    device: str | None,
    settings: Settings,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[SideCounts]:
    """One SideCounts per set, all sets' shards in flight together."""
    ensure_ray(settings)
    n_gpus = gpus_available()
    device = device or ("cuda" if n_gpus else "cpu")
    opts = {"num_gpus": 1} if device.startswith("cuda") else {"num_cpus": cpus_available()}
    per_set = max(1, n_gpus) if device.startswith("cuda") else 1
    refs: dict = {}
    layouts = []
    for i, aset in enumerate(sets):
        layout = document_layout(aset, window)
        layouts.append(layout)
        layout_ref = ray.put(layout)
        shards = aset.committed_shards()
        for part in (shards[j::per_set] for j in range(min(per_set, len(shards)))):
            ref = _count_task.options(**opts).remote(
                str(sae_path), str(aset.path), part, layout_ref, batch_contexts, device
            )
            refs[ref] = i
    totals: list[list[sp.csr_matrix] | None] = [None] * len(sets)
    n_tasks, done, pending = len(refs), 0, list(refs)
    while pending:
        if should_stop and should_stop():
            for ref in pending:
                ray.cancel(ref)
            raise ContrastCancelled("the contrast was cancelled")
        ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in ready:
            part, i = ray.get(ref), refs[ref]
            totals[i] = (
                list(part)
                if totals[i] is None
                else [t + p for t, p in zip(totals[i], part, strict=True)]
            )
            done += 1
            if progress:
                progress(done, n_tasks)
    sides = []
    for layout, tables in zip(layouts, totals, strict=True):
        assert tables is not None  # every set has a committed shard (checked up front)
        tokens = np.bincount(layout.unit[layout.counted], minlength=layout.n_units)
        fire, act, win = (t.tocsr() for t in tables)
        win = (win > 0).astype(np.float64)  # fired in the window at all (Ray's are read-only)
        sides.append(SideCounts(tokens.astype(np.int64), fire, act, win, window))
    return sides
