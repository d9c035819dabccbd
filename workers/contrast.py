"""A contrast's work: run an SAE over two activation sets, count per document where each
feature fires, then compare the two sides (saefeat/analysis/contrast.py).

Ray tasks (one per GPU, else one) take a share of every set's committed shards and
encode them with the indexing path (`workers.index.encoded_batches`); each returns
sparse [documents, d_sae] tables per set that the driver adds up into `SideCounts`.
`run_contrast(spec)` computes a contrast; `contrast_and_record` (workers/contrast_job.py,
what the job and `saefeat contrast` run) also stores it (storage/catalog/contrasts.py).

A side given as text sources (`a_corpus`, `b_corpus`) is harvested first (workers/
harvest_job.py, the set recorded in the catalog like any), after every side has been
checked (saefeat/analysis/contrast_corpora.py): a side with too few documents is refused
before the first harvest starts. Progress counts each such harvest as one task.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Unpack

import numpy as np
import ray
import scipy.sparse as sp
import torch

from saefeat.analysis.contrast import ContrastResult, check_inputs, compare_sides
from saefeat.analysis.contrast_corpora import check_before_harvest
from saefeat.analysis.contrast_docs import DocumentLayout, document_layout
from saefeat.analysis.contrast_stats import SideCounts
from saefeat.config import Settings, get_settings
from saefeat.devices import on_gpu, pick_device
from saefeat.features.token_rule import config_token_rule
from saefeat.sae import load_sae
from saefeat.sae.base import read_config
from saefeat.specs import ContrastSpec
from saefeat.storage.activations import ActivationSet
from saefeat.storage.exclusion import excluded_rows
from saefeat.workers.index import encoded_batches
from saefeat.workers.job_kinds import JobStopped
from saefeat.workers.job_progress import Progress, RunCallbacks, ShouldStop
from saefeat.workers.runtime import ensure_ray, gpus_available, task_cpus


class ContrastCancelled(JobStopped):
    """should_stop() asked the contrast to stop (the job runner records it as stopped)."""


Tables = tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]


def count_shards(
    sae_path: str,
    work: list[tuple[str, list[int]]],
    layouts: list[DocumentLayout],
    batch_contexts: int,
    device: str,
) -> list[Tables]:
    """For each (set path, shards) of `work`: (firing counts, activation sums, window
    firing) per [document, feature]. One task serves every set, loading the SAE once."""
    sae = load_sae(Path(sae_path), device)
    return [
        _count_set(sae, ActivationSet(Path(path)), shards, layout, batch_contexts, device)
        for (path, shards), layout in zip(work, layouts, strict=True)
    ]


def _count_set(sae, aset, shards, layout: DocumentLayout, batch_contexts, device) -> Tables:
    units, feats, acts, wins = [], [], [], []
    with torch.inference_mode():
        for s in shards:
            for row, _, vals, idx in encoded_batches(sae, aset, s, batch_contexts, device):
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
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[SideCounts]:
    """One SideCounts per set."""
    ensure_ray(settings)
    n_gpus = gpus_available()
    device = pick_device(device, n_gpus)
    opts = {"num_gpus": 1} if on_gpu(device) else {"num_cpus": task_cpus()}
    # One task per GPU, else one task for everything: each task loads the SAE once and
    # takes a share of every set's shards.
    n_tasks = max(1, n_gpus) if on_gpu(device) else 1
    cfg = read_config(Path(sae_path))
    layouts = [
        document_layout(aset, window, excluded_rows(aset, cfg.hook, config_token_rule(cfg, aset)))
        for aset in sets
    ]
    layouts_ref = ray.put(layouts)
    shards = [aset.committed_shards() for aset in sets]
    pending = [
        _count_task.options(**opts).remote(
            str(sae_path),
            [(str(aset.path), sh[j::n_tasks]) for aset, sh in zip(sets, shards, strict=True)],
            layouts_ref,
            batch_contexts,
            device,
        )
        for j in range(n_tasks)
    ]
    totals: list[list[sp.csr_matrix]] | None = None
    done = 0
    while pending:
        if should_stop and should_stop():
            for ref in pending:
                ray.cancel(ref)
            raise ContrastCancelled("the contrast was cancelled")
        ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
        for ref in ready:
            parts = [list(tables) for tables in ray.get(ref)]
            totals = parts if totals is None else [
                [t + p for t, p in zip(tot, part, strict=True)]
                for tot, part in zip(totals, parts, strict=True)
            ]  # fmt: skip
            done += 1
            if progress:
                progress(done, n_tasks)
    assert totals is not None
    sides = []
    for layout, tables in zip(layouts, totals, strict=True):
        tokens = np.bincount(layout.unit[layout.counted], minlength=layout.n_units)
        fire, act, win = (t.tocsr() for t in tables)
        win = (win > 0).astype(np.float64)  # fired in the window at all (Ray's are read-only)
        sides.append(SideCounts(tokens.astype(np.int64), fire, act, win, window))
    return sides


def harvest_corpus_sides(
    spec: ContrastSpec,
    settings: Settings,
    *,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> ContrastSpec:
    """Check every side, then harvest the sides given as text sources; the spec with
    their set ids filled in (a copy: its contrast id is still the given spec's).
    `progress(done, total)` counts the harvests."""
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.workers.harvest_job import harvest_and_record

    with catalog_session(settings) as s:
        inputs = check_inputs(spec, settings, s)  # the SAE, the sets, documents per side
    harvests = check_before_harvest(spec, inputs.cfg, settings)
    for i, harvest in enumerate(harvests.values()):
        if progress:
            progress(i, len(harvests))
        harvest_and_record(harvest, settings=settings, should_stop=should_stop)
    return spec.model_copy(update={side: h.set_id() for side, h in harvests.items()})


def run_contrast(
    spec: ContrastSpec, *, settings: Settings | None = None, **run: Unpack[RunCallbacks]
) -> ContrastResult:
    """Check the inputs, harvest the sides given as text sources, run the SAE over both
    sets (`run`: progress, should_stop), and compare them. The result's spec has both
    set ids; its contrast id is `spec`'s."""
    settings = settings or get_settings()
    t0 = time.perf_counter()
    from saefeat.storage.catalog.db import catalog_session

    progress, should_stop = run.get("progress"), run.get("should_stop")
    n_harvests = len(spec.corpus_sides())
    sets_spec = spec
    if n_harvests:
        sets_spec = harvest_corpus_sides(
            spec, settings, should_stop=should_stop,
            progress=progress and (lambda d, _t: progress(d, n_harvests + 1)),
        )  # fmt: skip
    with catalog_session(settings) as s:
        inputs = check_inputs(sets_spec, settings, s)
    count_progress = progress
    if progress and n_harvests:  # the harvests were tasks too
        count_progress = lambda d, t: progress(n_harvests + d, n_harvests + t)  # noqa: E731
    side_a, side_b = count_sides(
        inputs.sae_path,
        [inputs.a, inputs.b],
        window=spec.window,
        batch_contexts=spec.batch_contexts,
        device=spec.device,
        settings=settings,
        progress=count_progress,
        should_stop=should_stop,
    )
    t_pass = time.perf_counter() - t0
    stats, clf = compare_sides(spec, side_a, side_b)
    return ContrastResult(
        spec.contrast_id(), sets_spec, stats, clf, time.perf_counter() - t0, t_pass
    )
