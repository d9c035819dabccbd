"""Train SAEs on a harvested activation set: one, or a sweep sharing every batch read.

The recipe is sparsify's and OpenAI's: activations scaled to unit mean squared norm (the
set's statistics; the scale is folded into the weights at save), b_dec at the geometric
median of a sample, encoder initialised as the decoder's transpose at `init_decoder_norm`,
unit-norm decoder rows with the parallel gradient removed (SAEAdam, where the
architecture wants them), FVU plus the architecture's own terms as the loss, AuxK for
the TopK family, warm-up/decay of the learning rate, gradient clipping. Checkpoints every
`checkpoint_every_tokens` resume exactly (see state.py).

Training reads the tokens the set's token rule keeps (storage/exclusion.py: no position
0, no massive-norm token) of every context outside the held-out slice (heldout.py); the
metrics an SAE is registered with are measured on that slice (or on `eval_set`), with an
SAEBench `core` record beside them (core_eval.py).

What a run reads is sources.py's: a transcoder (TrainSpec.hook_out) reads inputs at
`hook` and targets at `hook_out`, a crosscoder (TrainSpec.sources) the concatenation of
its sources (hooks of the set, or of other models' sets on the same tokens), each part
scaled by its own statistics and read in lockstep; b_dec starts at the targets' centre,
and FVU is the targets'. CE/KL with the model spliced is measured for SAEs and
transcoders; a crosscoder spans models or layers, and reports FVU per source instead.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np
import torch

from saefeat.config import Settings, get_settings
from saefeat.devices import pick_device
from saefeat.errors import NotFoundError, SaefeatError, SpecError
from saefeat.sae import SAEConfig, SparseAutoencoder
from saefeat.sae.base import sae_class
from saefeat.specs import TrainSpec
from saefeat.storage.activations import STATUS_COMPLETE, ActivationSet, open_set
from saefeat.storage.exclusion import TokenRule, excluded_rows, exclusion_report, rule_for_set
from saefeat.storage.reader import ShuffledBatchReader
from saefeat.training import state as st
from saefeat.training.core_eval import core_eval
from saefeat.training.evaluate import evaluate
from saefeat.training.heldout import check_eval_set, heldout_contexts
from saefeat.training.init import geometric_median
from saefeat.training.memory import check_fits, estimate_bytes
from saefeat.training.run import Run, TrainingDiverged
from saefeat.training.schedule import default_lr, lr_factor
from saefeat.training.sources import (
    Key,
    concat,
    dropped_elsewhere,
    means,
    open_sources,
    reads_of,
    scales,
    token_variance,
)

__all__ = ["TrainResult", "default_lr", "lr_factor", "train_sae", "train_sweep"]

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)
EVAL_TOKENS = 50_000
MEDIAN_SAMPLE = 4096  # rows for the geometric median of b_dec's initial value
AUXK_DEAD_CAP = 10_000_000  # sparsify's dead_feature_threshold


@dataclass
class TrainResult:
    sae_id: str
    sae: SparseAutoencoder  # in raw activation units (scale folded in)
    checkpoint: Path
    metrics: dict
    core_eval: dict = field(default_factory=dict)  # SAEBench's core record
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def state_dir(settings: Settings, sae_id: str) -> Path:
    return settings.home / "train-state" / sae_id


def open_complete_set(settings: Settings, set_id: str) -> ActivationSet:
    aset = open_set(settings.activations_dir, set_id)
    if aset.status != STATUS_COMPLETE:
        raise SpecError(
            f"activation set {set_id} is not complete (status {aset.status}); "
            "finish its harvest first",
            field="activation_set",
        )
    return aset


def sae_config(spec: TrainSpec, aset: ActivationSet, hook: str,
               sets: dict[str, ActivationSet] | None = None) -> SAEConfig:  # fmt: skip
    """The checkpoint's config; a crosscoder's names its sources (`sets` holds them)."""
    sources = None
    if spec.sources:
        sets = sets or {aset.id: aset}
        # `scale`: the source's training scale (its decoder norms compare in those units)
        sources = [{"activation_set": sid, "hook": h, "model": sets[sid].model_name,
                    "revision": sets[sid].revision, "width": sets[sid].d_model,
                    "scale": float(sets[sid].stats[h]["scale"])}
                   for sid, h in reads_of(spec, aset).inputs]  # fmt: skip
        hook = sources[0]["hook"]
    d_in = sum(s["width"] for s in sources) if sources else aset.d_model
    d_sae = spec.d_sae or spec.expansion_factor * d_in
    spec.architecture.check_width(d_sae)  # before any training
    k, settings = spec.architecture.to_checkpoint()
    rule = rule_for_set(aset, hook, spec.massive_norm_threshold)
    extra = settings | {"init_decoder_norm": spec.init_decoder_norm, "token_rule": rule.to_json(),
                        "heldout": {"eval_set": spec.eval_set} if spec.eval_set
                        else {"frac": spec.heldout_frac}}  # fmt: skip
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=spec.architecture.name, k=k,
                    model=aset.model_name, hook=hook, activation_set=aset.id,
                    extra=extra, hook_out=spec.hook_out,
                    skip_connection=spec.skip_connection, sources=sources)  # fmt: skip
    return cfg


def build_sae(spec: TrainSpec, aset: ActivationSet, hook: str,
              sets: dict[str, ActivationSet] | None = None) -> SparseAutoencoder:  # fmt: skip
    cfg = sae_config(spec, aset, hook, sets)
    sae = sae_class(cfg.architecture)(cfg)
    sae.init_weights(spec.init_decoder_norm)
    return sae


@dataclass
class Split:
    """Where training and evaluation read: contexts of the set (None: all) and the set
    evaluation reads (the training set's held-out slice, or `eval_set`)."""

    train_contexts: np.ndarray | None
    eval_set: ActivationSet
    eval_contexts: np.ndarray | None

    def describe(self) -> dict:
        n = (int(self.eval_contexts.sum()) if self.eval_contexts is not None
             else self.eval_set.n_contexts)  # fmt: skip
        return {"eval_set": self.eval_set.id, "contexts": n,
                "held_out_of_training_set": self.eval_contexts is not None}  # fmt: skip

    def eval_context_ids(self) -> np.ndarray:
        if self.eval_contexts is None:
            return np.arange(self.eval_set.n_contexts)
        return np.flatnonzero(self.eval_contexts)


def make_split(settings: Settings, spec: TrainSpec, aset: ActivationSet, hooks: list[str]) -> Split:
    if spec.eval_set:
        try:
            other = open_complete_set(settings, spec.eval_set)
        except (SpecError, NotFoundError) as e:
            raise SpecError(str(e), field="eval_set") from None
        for h in hooks:
            check_eval_set(aset, other, h)
        return Split(None, other, None)
    held = heldout_contexts(aset.n_contexts, spec.heldout_frac)
    return Split(~held, aset, held)


def _median_sample(readers: dict[Key, ShuffledBatchReader], keys: tuple[Key, ...]) -> torch.Tensor:
    """The first rows of the concatenation of `keys` (the readers are in lockstep)."""
    rows, n = [], 0
    for parts in zip(*(readers[k].iter_epoch(0) for k in keys), strict=False):
        rows.append(torch.cat(parts, 1))
        n += parts[0].shape[0]
        if n >= MEDIAN_SAMPLE:
            break
    return torch.cat(rows)[:MEDIAN_SAMPLE]


def _check_sweep(specs: list[TrainSpec]) -> None:
    if not specs:
        raise SpecError("a sweep needs at least one spec", field="specs")
    first = specs[0]
    for s in specs[1:]:
        for f in ("activation_set", "batch_size", "epochs", "seed", "device", "heldout_frac",
                  "eval_set", "massive_norm_threshold"):  # fmt: skip
            if getattr(s, f) != getattr(first, f):
                raise SpecError(
                    f"every SAE of a sweep reads the same batches, so {f} must agree "
                    f"({getattr(first, f)!r} vs {getattr(s, f)!r})",
                    field=f,
                )


def train_sae(
    spec: TrainSpec, *, settings: Settings | None = None, progress: Progress | None = None
) -> TrainResult:
    return train_sweep([spec], settings=settings, progress=progress)[0]


def train_sweep(
    specs: list[TrainSpec], *, settings: Settings | None = None, progress: Progress | None = None
) -> list[TrainResult]:
    """Train several SAEs (widths, k, architectures, hooks of one set) in one pass over the
    data: one reader per hook, each batch read once and given to every SAE on that hook."""
    settings = settings or get_settings()
    t0 = time.perf_counter()
    _check_sweep(specs)
    first = specs[0]
    aset = open_complete_set(settings, first.activation_set)
    device = torch.device(pick_device(first.device, torch.cuda.device_count()))
    reads = [reads_of(s, aset) for s in specs]
    hooks = [r.inputs[0][1] for r in reads]
    sets: dict[str, ActivationSet] = {}
    for s in specs:
        sets |= open_sources(settings, s, aset)
    ids = [s.sae_id() for s in specs]
    if len(set(ids)) != len(ids):
        raise SpecError("the sweep holds the same SAE twice", field="specs")
    cfgs = [sae_config(s, aset, h, sets) for s, h in zip(specs, hooks, strict=True)]
    check_fits([(f"{c.architecture} d_sae={c.d_sae}",
                 estimate_bytes(c.d_in, c.d_sae, s.batch_size, c.architecture,
                                s.optimizer_state))
                for c, s in zip(cfgs, specs, strict=True)], device)  # fmt: skip

    keys = list(dict.fromkeys(k for r in reads for k in r.keys))
    split = make_split(settings, first, aset, [h for sid, h in keys if sid == aset.id])
    rules = {k: rule_for_set(sets[k[0]], k[1], first.massive_norm_threshold) for k in keys}
    # One set of excluded rows for every source: their readers serve the same rows.
    excluded = reduce(np.union1d, [excluded_rows(sets[k[0]], k[1], rules[k]) for k in keys]
                      + [dropped_elsewhere(sets)])  # fmt: skip
    readers = {k: ShuffledBatchReader(sets[k[0]], k[1], first.batch_size, seed=first.seed,
                                      excluded=excluded, contexts=split.train_contexts)
               for k in keys}  # fmt: skip
    if not next(iter(readers.values())).rows_per_epoch:
        raise SpecError(f"set {aset.id} has no token to train on once the held-out slice "
                        "and the excluded tokens are left out", field="activation_set")  # fmt: skip
    per_epoch = next(iter(readers.values())).batches_per_epoch
    rows_per_epoch = next(iter(readers.values())).rows_per_epoch
    total = max(1, int(per_epoch * first.epochs))

    medians: dict[tuple[Key, ...], torch.Tensor] = {}  # one sample per target, shared
    runs: list[Run] = []
    for spec, hook, r, sae_id in zip(specs, hooks, reads, ids, strict=True):
        torch.manual_seed(spec.seed)
        sae = build_sae(spec, aset, hook, sets).to(device)
        scale, out_scale = scales(sets, r.inputs), scales(sets, r.targets)
        with torch.no_grad():  # b_dec and FVU are in the targets' (scaled) units
            if spec.geometric_median_init and r.targets not in medians:
                sample = _median_sample(readers, r.targets) * out_scale
                medians[r.targets] = geometric_median(sample.to(device))
            centre = (medians[r.targets] if spec.geometric_median_init
                      else means(sets, r.targets).to(device) * out_scale.to(device))  # fmt: skip
            sae.b_dec.copy_(centre)
        # Dead for AuxK after half an epoch without firing (capped at sparsify's 10M
        # tokens): short runs need the signal early.
        dead_after = spec.dead_after_tokens or min(AUXK_DEAD_CAP, rows_per_epoch // 2)
        runs.append(Run(spec, sae_id, hook, sae, scale, dead_after,
                        token_variance(sets, r.targets), device, r, out_scale))  # fmt: skip

    start = _resume(runs, settings, device)
    every = (max(1, first.checkpoint_every_tokens // first.batch_size)
             if first.checkpoint_every_tokens else None)  # fmt: skip
    last_saved: int | None = start if start else None
    step = start
    try:
        for step, batches in _batches(readers, per_epoch, start, total):
            for run in runs:
                y = concat(batches, run.reads.targets) if run.reads.is_transcoder else None
                loss = run.step(concat(batches, run.reads.inputs), step, total, y)
            if every and (step + 1) % every == 0 and step + 1 < total:
                _save_states(runs, settings, step + 1, per_epoch)
                last_saved = step + 1
            if progress:
                progress(step + 1, total, loss)
    except TrainingDiverged as e:
        kept = (f"the last good checkpoint (step {last_saved}) is kept under "
                f"{state_dir(settings, runs[0].sae_id).parent}" if last_saved is not None
                else "no checkpoint had been written yet")  # fmt: skip
        raise TrainingDiverged(f"{e.message}; stopped, {kept}. Lower lr or check the data.",
                               field="lr") from None  # fmt: skip

    for run in runs:
        run.sae.fold_input_scale(run.scale, run.out_scale)
        run.sae.eval()
    spliced = _spliced_metrics(runs, aset, split, rules, device)
    return [_finish(run, aset, sets, split, rules, settings, ce, total, t0)
            for run, ce in zip(runs, spliced, strict=True)]  # fmt: skip


def _batches(
    readers: dict[Key, ShuffledBatchReader], per_epoch: int, start: int, total: int
) -> Iterator[tuple[int, dict[Key, torch.Tensor]]]:
    """(step, {source: batch}) from `start` on; the readers stay in lockstep (same
    seed, same rows), and a resumed run re-enters mid-epoch without reading the skip."""
    step = start
    while step < total:
        epoch, batch = divmod(step, per_epoch)
        iters = {h: r.iter_epoch(epoch, batch) for h, r in readers.items()}
        try:
            for _ in range(batch, per_epoch):
                if step >= total:
                    return
                yield step, {h: next(it) for h, it in iters.items()}
                step += 1
        finally:
            for it in iters.values():
                it.close()


def _save_states(runs: list[Run], settings: Settings, step: int, per_epoch: int) -> None:
    epoch, batch = divmod(step, per_epoch)
    rng = st.rng_states()
    for run in runs:  # a sweep keeps each previous state: st.load_common_step
        st.save_state(state_dir(settings, run.sae_id),
                      run.state() | {"position": st.Position(step, epoch, batch).__dict__,
                                     "rng": rng}, keep_previous=len(runs) > 1)  # fmt: skip


def _resume(runs: list[Run], settings: Settings, device: torch.device) -> int:
    """Load every run's saved state (all or none), returning the step to start at."""
    folders = [Path(r.spec.resume_from) if r.spec.resume_from else state_dir(settings, r.sae_id)
               for r in runs]  # fmt: skip
    explicit = any(r.spec.resume_from for r in runs)
    present = [st.has_state(f) for f in folders]
    if not any(present) and not explicit:
        return 0
    states = st.load_common_step(folders, [r.identity() for r in runs], device)
    for run, s in zip(runs, states, strict=True):
        run.load(s)
    st.set_rng_states(states[0]["rng"])
    return states[0]["position"]["step"]


def _spliced_metrics(runs: list[Run], aset: ActivationSet, split: Split,
                     rules: dict[Key, TokenRule], device: torch.device) -> list[dict]:  # fmt: skip
    """CE/KL with each SAE or transcoder spliced in, on the first held-out contexts; one
    model load and one clean run for the whole sweep (a crosscoder spans several sources:
    none). A model that cannot be loaded is reported in the metrics: the SAEs are
    trained and must not be lost to an evaluation."""
    from saefeat.lm import load_model
    from saefeat.training.model_evals import spliced_metrics_many

    wanted = [r for r in runs if r.spec.eval_ce_contexts and len(r.reads.inputs) == 1]
    if not wanted:
        return [{} for _ in runs]
    contexts = split.eval_context_ids()[: max(r.spec.eval_ce_contexts for r in wanted)]
    try:
        lm = load_model(aset.model_name, revision=aset.revision, device=device)
    except (SaefeatError, OSError) as e:
        return [{"ce_eval_error": str(e)} if r.spec.eval_ce_contexts else {} for r in runs]
    tokens = torch.from_numpy(np.asarray(split.eval_set.tokens())[contexts])
    limits = [rules[r.reads.inputs[0]].norm_limit for r in wanted]  # each its read hook's
    found = iter(spliced_metrics_many([(r.sae, r.hook) for r in wanted], lm, tokens,
                                      norm_limits=limits))  # fmt: skip
    return [next(found) if r in wanted else {} for r in runs]


def _finish(run: Run, aset: ActivationSet, sets: dict[str, ActivationSet], split: Split,
            rules: dict[Key, TokenRule], settings: Settings, spliced: dict, total: int,
            t0: float) -> TrainResult:  # fmt: skip
    """Held-out metrics (typical tokens as the headline, all tokens but position 0 beside
    them; a crosscoder's FVU per source too), the excluded-token counts, the core record;
    save."""
    sae, spec, reads = run.sae, run.spec, run.reads
    ev, ctx = split.eval_set, split.eval_contexts
    rule = rules[reads.inputs[0]]

    def where(key: Key) -> ActivationSet:  # the training set's sources are read in `ev`
        return ev if key[0] == aset.id else sets[key[0]]

    def read(keys: tuple[Key, ...], excluded: np.ndarray | None) -> Iterator[torch.Tensor]:
        parts = [ShuffledBatchReader(where(k), k[1], 1024, seed=0, excluded=excluded,
                                     contexts=ctx).iter_epoch(0) for k in keys]  # fmt: skip
        return (torch.cat(p, 1) for p in zip(*parts, strict=False))

    def batches(excluded: np.ndarray | None) -> Iterator:
        """The inputs; a transcoder's with its targets, the same rows (one seed)."""
        if not reads.is_transcoder:
            return read(reads.inputs, excluded)
        return zip(read(reads.inputs, excluded), read(reads.targets, excluded), strict=False)

    dropped = dropped_elsewhere({k[0]: where(k) for k in reads.keys})
    massive = reduce(np.union1d, [excluded_rows(where(k), k[1], rules[k]) for k in reads.inputs]
                     + [dropped])  # fmt: skip
    widths = sae.cfg.source_widths if sae.cfg.is_crosscoder else None
    typical = evaluate(sae, batches(massive), max_tokens=EVAL_TOKENS, with_density=True,
                       source_widths=widths)  # fmt: skip
    density = typical.pop("density")
    every = evaluate(sae, batches(dropped), max_tokens=EVAL_TOKENS)
    metrics = typical | {
        "evaluated_on": "held-out typical tokens",
        "fvu_all_tokens": every["fvu"],
        "heldout": split.describe(),
        "excluded_tokens": exclusion_report(ev, run.hook, rule, ctx),
        "excluded_tokens_train": exclusion_report(aset, run.hook, rule, split.train_contexts),
    }
    metrics.update(steps=total, tokens_trained=total * spec.batch_size, lr=run.base_lr,
                   final_loss=run.losses[-1] if run.losses else None, **spliced)  # fmt: skip
    config = {"model_name": sae.cfg.model, "hook_name": run.hook, "dataset": ev.id,
              "heldout": split.describe(), "token_rule": rule.to_json(),
              "exclude_special_tokens_from_reconstruction": True,
              "n_eval_reconstruction_tokens": typical["n_tokens"],
              "n_eval_ce_tokens": spliced.get("ce_eval_tokens", 0)}  # fmt: skip
    record = core_eval(sae, run.sae_id, typical, density, spliced, config)
    checkpoint = sae.save(settings.saes_dir / run.sae_id, overwrite=True)
    (checkpoint / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (checkpoint / "core_eval.json").write_text(json.dumps(record))
    shutil.rmtree(state_dir(settings, run.sae_id), ignore_errors=True)
    return TrainResult(run.sae_id, sae, checkpoint, metrics, record, run.losses,
                       time.perf_counter() - t0)  # fmt: skip
