"""Indexing: run an SAE over its activation set and build the feature catalog's content.

Ray tasks (inside `runtime.work_here()`, the CLI's local runs: this process) each take
a slice of the committed shards, run the SAE over whole contexts
(the tokens the SAE's token rule excludes count nowhere; storage/exclusion.py) and
return a FeatureAccumulator (statistics, top-N examples, quantile samples); the
driver merges them, adds the vocabulary projection and the decoder-cosine neighbours
from the weights, and turns the tables into FeatureIndex records.

The SAE encodes the hook it reads (`cfg.hook`): the examples and statistics are that
hook's. A transcoder's decoder writes another hook (`cfg.write_hook`, the MLP's output):
its measured effects remove each feature's decoder row there.

A crosscoder (cfg `sources`) encodes its sources' activations concatenated, shard by
shard (the sets are row-aligned), a row left out when any source's token rule or any
set's dropped contexts leave it out; its examples' tokens and its projections' model are
the first source's; it gets per-source decoder norms, relative norm and class, and no
measured effect (features/crosscoder.py says why).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import torch

from saefeat.config import Settings, get_settings
from saefeat.devices import on_gpu, pick_device
from saefeat.features.accumulate import HIST_EDGES, FeatureAccumulator
from saefeat.features.artifacts import flag_artifacts, special_token_ids
from saefeat.features.crosscoder import (
    SourceSets,
    crosscoder_columns,
    open_source_sets,
    projected_rows,
)
from saefeat.features.distinct import distinct_examples, window_keys
from saefeat.features.effects import debiased_projections, effect_pairs, measured_effects
from saefeat.features.fired import fired_tokens
from saefeat.features.logit_histogram import LogitHistograms
from saefeat.features.neighbours import decoder_neighbours
from saefeat.features.records import FeatureExample, FeatureIndex, TokenEffects
from saefeat.features.token_rule import sae_token_rule
from saefeat.features.umap_map import N_NEIGHBOURS as UMAP_NEIGHBOURS
from saefeat.features.umap_map import umap_layout
from saefeat.features.vocab import token_strings, vocab_projections
from saefeat.lm import cached_model
from saefeat.sae import SparseAutoencoder, load_sae
from saefeat.sae.crosscoder import source_scales
from saefeat.specs import IndexSpec
from saefeat.storage.activations import ActivationSet
from saefeat.workers.job_progress import Progress
from saefeat.workers.runtime import (
    cpus_available,
    ensure_ray,
    gpus_available,
    runs_here,
    task_cpus,
)


def accumulate_shards(
    sae_path: str,
    set_path: str,
    shards: list[int],
    spec_json: str,
    device: str,
    counter=None,
    report: Callable[[int], None] | None = None,
    activations_dir: str | None = None,
) -> FeatureAccumulator:
    """Run the SAE over some shards of the set (whole contexts at a time); each batch
    done is told to `report` and added to `counter` (a _BatchCounter). A crosscoder's
    `set_path` is its first source's set, its other sets are under `activations_dir`
    (default: that set's folder)."""
    spec = IndexSpec.model_validate_json(spec_json)
    sae = load_sae(Path(sae_path), device).eval()
    aset = ActivationSet(Path(set_path))
    acc = new_accumulator(sae.cfg.d_sae, spec, device, seed=shards[0] if shards else 0)
    rule = sae_token_rule(sae, aset)
    sources = None
    if sae.cfg.is_crosscoder:
        sources = open_source_sets(sae.cfg, Path(activations_dir or aset.path.parent), aset)
    with torch.inference_mode():
        for s in shards:
            keys, r0 = _shard_window_keys(aset, s, spec.window)
            batches = encoded_batches(sae, aset, s, spec.batch_contexts, device, sources)
            for row, x, vals, idx in batches:
                pos = torch.arange(x.shape[0], device=x.device) % aset.ctx_len
                excluded = (rule.excluded_rows(x, pos) if sources is None
                            else sources.excluded_rows(x, pos, row))  # fmt: skip
                acc.add(vals, idx, first_context=row // aset.ctx_len, ctx_len=aset.ctx_len,
                        excluded=excluded,
                        window_keys=keys[row - r0 : row - r0 + x.shape[0]])  # fmt: skip
                if counter is not None:
                    counter.add.remote(1)
                if report is not None:
                    report(1)
    return acc


def _shard_window_keys(aset: ActivationSet, shard: int, w: int) -> tuple[torch.Tensor, int]:
    """The window key of every token of a shard (features/distinct.py) and its first row."""
    c0, c1 = aset.shard_contexts(shard)
    tokens = torch.from_numpy(np.asarray(aset.tokens(c0, c1), dtype=np.int64))
    return window_keys(tokens, w), c0 * aset.ctx_len


def encoded_batches(
    sae: SparseAutoencoder,
    aset: ActivationSet,
    shard: int,
    batch_contexts: int,
    device: str,
    sources: SourceSets | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The SAE's sparse codes of one committed shard, whole contexts at a time:
    (the batch's first row in the set, its activations, vals, idx); a crosscoder's
    activations are its `sources`' concatenated. Call under inference_mode."""
    x_all = aset.read_shard(shard, sae.cfg.hook) if sources is None else sources.read_shard(shard)
    r0, _ = aset.shard_rows(shard)
    rows = batch_contexts * aset.ctx_len
    for b in range(0, x_all.shape[0], rows):
        x = x_all[b : b + rows].to(device)
        vals, idx = sae.encode(x)
        yield r0 + b, x, vals, idx


def new_accumulator(d_sae: int, spec: IndexSpec, device: str, seed: int = 0) -> FeatureAccumulator:
    # Each task seeds its sampler differently (by its first shard) so keys stay independent.
    return FeatureAccumulator(
        d_sae,
        spec.n_examples,
        spec.window,
        device,
        n_quantile_bins=spec.n_quantile_bins,
        per_quantile_bin=spec.per_quantile_bin,
        seed=seed,
    )


_accumulate_task = ray.remote(max_retries=3)(accumulate_shards)


@ray.remote(num_cpus=0)
class _BatchCounter:
    """Batches the accumulate tasks have run the SAE over: the index's progress. A
    retried task counts its batches again; the driver caps the count at the total."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, n: int) -> None:
        self.n += n

    def get(self) -> int:
        return self.n


@dataclass
class IndexResult:
    index: FeatureIndex
    seconds: float
    excluded_tokens: int = 0  # left out by the token rule


def index_sae(
    spec: IndexSpec,
    *,
    sae_path: Path,
    aset: ActivationSet,
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> IndexResult:
    settings = settings or get_settings()
    t0 = time.perf_counter()
    sae = load_sae(sae_path)
    shards = aset.committed_shards()
    if sae.cfg.is_crosscoder:  # its first source's set leads; every set has its shards
        sources = open_source_sets(sae.cfg, settings.activations_dir, aset)
        aset, shards = sources.main, sources.committed_shards()
    # Progress counts batches of tokens: the SAE's over the set, then (once their number
    # is known, the total grows by it) the model's that measure the token effects.
    rows = spec.batch_contexts * aset.ctx_len
    total = sum(-(-(aset.shard_rows(s)[1] - aset.shard_rows(s)[0]) // rows) for s in shards)
    if progress:
        progress(0, total, "the SAE over the set")
    if runs_here(settings) and torch.cuda.device_count() <= 1:
        acc = _accumulate_here(sae_path, aset, shards, spec, total, progress, settings)
    else:
        acc = _accumulate_on_ray(sae_path, aset, shards, spec, settings, total, progress)

    def finishing(done: int, more: int, phase: str) -> None:
        if progress:
            progress(total + done, total + more, phase)

    index = build_index(acc, sae, aset, spec, finishing)
    return IndexResult(index, time.perf_counter() - t0, acc.n_excluded)


def _accumulate_here(sae_path: Path, aset: ActivationSet, shards: list[int], spec: IndexSpec,
                     total: int, progress: Progress | None,
                     settings: Settings) -> FeatureAccumulator:  # fmt: skip
    """Every shard in this process (runtime.work_here(): the CLI's local index)."""
    device = pick_device(spec.device, torch.cuda.device_count())
    done = 0

    def report(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(min(done, total), total)

    return accumulate_shards(str(sae_path), str(aset.path), shards, spec.model_dump_json(),
                             device, report=report,
                             activations_dir=str(settings.activations_dir))  # fmt: skip


def _accumulate_on_ray(sae_path: Path, aset: ActivationSet, shards: list[int],
                       spec: IndexSpec, settings: Settings, total: int,
                       progress: Progress | None) -> FeatureAccumulator:  # fmt: skip
    ensure_ray(settings)
    n_gpus = gpus_available()
    device = pick_device(spec.device, n_gpus)
    # On CPUs: tasks as big as a node allows (one on a single machine), spread over nodes.
    per_task = task_cpus()
    n_cpu_tasks = max(1, cpus_available() // per_task)
    n_tasks = min(len(shards), max(1, n_gpus) if on_gpu(device) else n_cpu_tasks)
    opts = {"num_gpus": 1} if on_gpu(device) else {"num_cpus": per_task}
    parts = [shards[i::n_tasks] for i in range(n_tasks)]
    counter = _BatchCounter.remote()
    refs = [
        _accumulate_task.options(**opts).remote(
            str(sae_path),
            str(aset.path),
            part,
            spec.model_dump_json(),
            device,
            counter,
            activations_dir=str(settings.activations_dir),
        )
        for part in parts
    ]
    acc: FeatureAccumulator | None = None
    try:
        while refs:
            ready, refs = ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in ready:
                part = ray.get(ref)
                acc = part if acc is None else (acc.merge(part) or acc)
            if progress:
                progress(min(ray.get(counter.get.remote()), total), total)
    finally:
        ray.kill(counter)
    assert acc is not None
    return acc


def build_index(
    acc: FeatureAccumulator,
    sae: SparseAutoencoder,
    aset: ActivationSet,
    spec: IndexSpec,
    progress: Callable[[int, int, str], None] | None = None,
) -> FeatureIndex:
    """The index from the merged accumulator; `progress(done, total, phase)` counts the
    model's batches that measure the token effects (then the map is drawn). `aset` is
    the set the SAE was encoded over (a crosscoder's first source's): its tokens and
    model."""
    acc = acc.to("cpu")
    lm = cached_model(aset.model_name, aset.revision, "cpu")
    W_U, norm_scale = lm.unembedding()
    strings = token_strings(lm.tokenizer, W_U.shape[0])
    fires = acc.fires.numpy()
    n = max(acc.n_tokens, 1)
    tokens = aset.tokens()  # read once for both kinds of example
    examples = _examples(acc, aset, tokens, strings) + _quantile_examples(
        acc, aset, tokens, strings
    )
    # One window once; quantile samples leave out the top examples' windows.
    examples = distinct_examples(examples, spec.window)
    logits = LogitHistograms(sae.cfg.d_sae)  # filled by the projection's pass
    rows = _projected_rows(sae)
    projections = vocab_projections(rows, W_U, norm_scale, strings, spec.n_vocab,
                                    on_logits=logits.add)  # fmt: skip
    last = [0, 0]  # the effects' batches: done, total

    def effect_batches(done: int, total: int) -> None:
        last[:] = done, total
        if progress:
            progress(done, total, "token effects")

    effects = _effects(acc, sae, aset, spec, tokens, (W_U, norm_scale), strings, effect_batches)
    if progress:
        progress(*last, "neighbours and the map")
    near, cosines, xy = _neighbours_and_map(sae.W_dec.detach(), spec)
    cc = (crosscoder_columns(sae.W_dec, sae.cfg.source_widths, source_scales(sae.cfg))
          if sae.cfg.is_crosscoder else None)  # fmt: skip
    return FeatureIndex(
        d_sae=sae.cfg.d_sae,
        n_tokens=acc.n_tokens,
        density=fires / n,
        max_activation=acc.act_max.numpy(),
        mean_activation=np.where(fires > 0, acc.act_sum.numpy() / np.maximum(fires, 1), 0.0),
        examples=examples,
        projections=projections,
        histogram_edges=HIST_EDGES,
        histograms=acc.hist.numpy(),
        neighbour_indices=near.numpy() if spec.n_neighbours else None,
        neighbour_cosines=cosines.numpy() if spec.n_neighbours else None,
        effects=effects,
        artifacts=_artifacts(sae.cfg.d_sae, examples, tokens, lm.tokenizer, strings),
        fired_tokens=fired_tokens(examples),
        logit_histograms=logits.counts,
        logit_ranges=logits.ranges,
        n_quantile_bins=spec.n_quantile_bins if acc.quantiles is not None else 0,
        umap=xy,
        decoder_norms=cc.decoder_norms if cc else None,
        relative_norms=cc.relative_norms if cc else None,
        sharing=cc.sharing if cc else None,
    )


def _projected_rows(sae: SparseAutoencoder) -> torch.Tensor:
    """The decoder rows the vocabulary and de-biased projections read: W_dec, or a
    crosscoder's one row per feature in its first source's model (features/crosscoder.py)."""
    W_dec = sae.W_dec.detach()
    if not sae.cfg.is_crosscoder:
        return W_dec
    return projected_rows(W_dec, sae.cfg.source_widths, source_scales(sae.cfg))


def _neighbours_and_map(W_dec: torch.Tensor, spec: IndexSpec):
    """(neighbour indices, cosines) [d_sae, n_neighbours] and the map [d_sae, 2] (None
    with spec.umap off): one exact cosine ranking serves both (features/umap_map.py)."""
    k = max(spec.n_neighbours, UMAP_NEIGHBOURS - 1 if spec.umap else 0)
    near, cosines = decoder_neighbours(W_dec, k)
    xy = umap_layout(W_dec, near.numpy(), cosines.numpy()) if spec.umap else None
    return near[:, : spec.n_neighbours], cosines[:, : spec.n_neighbours], xy


def _effects(acc, sae, aset, spec, tokens, unembedding, strings,
             progress: Callable[[int, int], None] | None = None) -> list[TokenEffects]:  # fmt: skip
    """Every feature's de-biased projection, and the measured effect on the next token of
    each feature that fired, in its `n_effect_contexts` strongest contexts (features/
    effects.py). The model runs on the driver: its GPU if it has one, else the CPU. A
    crosscoder has no measured effect (it spans models or layers; one model runs here)."""
    W_dec = sae.W_dec.detach()
    effects = debiased_projections(_projected_rows(sae), unembedding, strings, spec.n_vocab)
    if sae.cfg.is_crosscoder:
        return effects
    pairs = effect_pairs(acc.top_vals, acc.top_ctx, acc.top_pos, spec.n_effect_contexts)
    if len(pairs):
        device = "cpu"
        if torch.cuda.is_available() and on_gpu(pick_device(spec.device, 1)):
            device = pick_device(spec.device, 1)
        lm = cached_model(aset.model_name, aset.revision, device)
        # The rows are removed where the decoder writes (a transcoder: the MLP's output).
        hook = sae.cfg.write_hook
        acts = _hook_acts(aset, hook) if hook in aset.hooks else None
        effects += measured_effects(
            lm, W_dec, hook, tokens, pairs, strings, spec.n_vocab,
            hook_acts=acts, context_block=aset.contexts_per_shard, progress=progress,
        )  # fmt: skip
    return effects


def _hook_acts(aset: ActivationSet, hook: str, keep: int = 4):
    """Contexts -> their activations at the hook [n, ctx_len, d], read from the set a shard
    at a time (the last `keep` shards kept): the measured effect starts from them."""
    shards: dict[int, torch.Tensor] = {}

    def read(contexts: np.ndarray) -> torch.Tensor:
        out = []
        for c in contexts.tolist():
            s = c // aset.contexts_per_shard
            if s not in shards:
                while len(shards) >= keep:
                    shards.pop(next(iter(shards)))
                shards[s] = aset.read_shard(s, hook).reshape(-1, aset.ctx_len, aset.d_model)
            out.append(shards[s][c - aset.shard_contexts(s)[0]])
        return torch.stack(out)

    return read


def _artifacts(d_sae: int, examples, tokens, tokenizer, strings) -> list[str | None]:
    """features/artifacts.py's rule over the top examples, with the token before each
    example's focus read from the set's tokens (-1 at position 0)."""
    tops = [e for e in examples if e.kind == "top"]
    ctx = np.fromiter((e.context_index for e in tops), np.int64, len(tops))
    pos = np.fromiter((e.position for e in tops), np.int64, len(tops))
    known = (ctx >= 0) & (pos > 0)
    previous = np.full(len(tops), -1, np.int64)
    if known.any():
        previous[known] = np.asarray(tokens)[ctx[known], pos[known] - 1]
    return flag_artifacts(d_sae, tops, previous.tolist(), special_token_ids(tokenizer), strings)


def _example(tokens, strings, ctx_len, w, f, rank, value, ctx, pos, window, kind):
    lo, hi = max(0, pos - w), min(ctx_len, pos + w + 1)
    ids = tokens[ctx, lo:hi].tolist()
    return FeatureExample(
        feature_index=f,
        rank=rank,
        activation=value,
        context_index=ctx,
        position=pos,
        token_ids=ids,
        token_strs=[strings[i] if i < len(strings) else "" for i in ids],
        values=window[lo - (pos - w) : hi - (pos - w)].tolist(),
        focus=pos - lo,
        kind=kind,
    )


def _examples(acc: FeatureAccumulator, aset: ActivationSet, tokens, strings: list[str]):
    held = (acc.top_vals > -float("inf")).nonzero().tolist()
    return [
        _example(
            tokens,
            strings,
            aset.ctx_len,
            acc.window,
            f,
            rank,
            float(acc.top_vals[f, rank]),
            int(acc.top_ctx[f, rank]),
            int(acc.top_pos[f, rank]),
            acc.top_window[f, rank],
            "top",
        )
        for f, rank in held
    ]


def _quantile_examples(acc: FeatureAccumulator, aset: ActivationSet, tokens, strings: list[str]):
    if acc.quantiles is None:
        return []
    f, v, ctx, pos, win = acc.quantiles.samples()
    out, last, rank = [], -1, 0
    rows = zip(f.tolist(), v.tolist(), ctx.tolist(), pos.tolist(), win, strict=True)
    for fi, vi, ci, pi, wi in rows:
        rank = rank + 1 if fi == last else 0  # samples() gives each feature's strongest first
        last = fi
        out.append(
            _example(
                tokens, strings, aset.ctx_len, acc.window, fi, rank, vi, ci, pi, wi, "quantile"
            )
        )
    return out
