"""What each SAE of a sweep reads: its inputs and its targets, as (set, hook) sources.

An SAE reads one hook and reconstructs it; a transcoder reads one hook and predicts
another of the same set (`hook_out`); a crosscoder reads several sources concatenated
and reconstructs them all (`sources`: hooks of one set, or the same hook of sets of other
models on identical tokens). Every source a sweep reads gets one reader, all with one
seed, one set of excluded rows and one context split, so their batches are the same rows
in lockstep and a run's parts can be concatenated. Each source is scaled to unit mean
squared norm by its own set statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from saefeat.config import Settings
from saefeat.errors import NotFoundError, SpecError
from saefeat.pairing import token_difference
from saefeat.specs import TrainSpec
from saefeat.storage.activations import ActivationSet

Key = tuple[str, str]  # (activation set id, hook)


@dataclass(frozen=True)
class Reads:
    """One run's sources: `inputs` concatenated feed the encoder, `targets` concatenated
    are what the decoder must give back (the inputs themselves, but for a transcoder)."""

    inputs: tuple[Key, ...]
    targets: tuple[Key, ...]

    @property
    def keys(self) -> tuple[Key, ...]:
        return tuple(dict.fromkeys(self.inputs + self.targets))

    @property
    def is_transcoder(self) -> bool:
        return self.targets != self.inputs


def reads_of(spec: TrainSpec, aset: ActivationSet) -> Reads:
    if spec.sources:
        keys = tuple((s.activation_set or aset.id, s.hook) for s in spec.sources)
        return Reads(keys, keys)
    hook = spec.hook or aset.hooks[0]
    inputs = ((aset.id, hook),)
    return Reads(inputs, ((aset.id, spec.hook_out),) if spec.hook_out else inputs)


def check_sources(sets: dict[str, ActivationSet], reads: list[Reads], main: ActivationSet):
    """Every source's hook is in its set, and every other set holds the main set's tokens
    in the same contexts and shards (its rows are the same tokens, row for row)."""
    for r in reads:
        for sid, hook in r.keys:
            aset = sets[sid]
            if hook not in aset.hooks:
                field = "hook_out" if r.is_transcoder and (sid, hook) in r.targets else (
                    "sources" if len(r.inputs) > 1 else "hook")  # fmt: skip
                raise SpecError(f"{field} {hook!r} is not in set {sid}; it has {aset.hooks}",
                                field=field)  # fmt: skip
    for sid, aset in sets.items():
        if sid == main.id:
            continue
        same = (aset.contexts_per_shard == main.contexts_per_shard
                and token_difference(aset, main) is None)  # fmt: skip
        if not same:
            raise SpecError(f"set {sid} does not hold set {main.id}'s tokens: a crosscoder's "
                            "sets come from one paired harvest (paired_model)",
                            field="sources")  # fmt: skip


def open_sources(settings: Settings, spec: TrainSpec, aset: ActivationSet
                 ) -> dict[str, ActivationSet]:  # fmt: skip
    """The sets a spec reads, `aset` (its activation_set) first, once they pass
    `check_sources`: the trainer's check, and admission's before a job row is written."""
    from saefeat.storage.activations import STATUS_COMPLETE, open_set

    reads = reads_of(spec, aset)
    sets = {aset.id: aset}
    for sid in dict.fromkeys(k[0] for k in reads.keys):
        if sid in sets:
            continue
        try:
            other = open_set(settings.activations_dir, sid)
        except (SpecError, NotFoundError):
            other = None
        if other is None or other.status != STATUS_COMPLETE:
            state = "does not exist" if other is None else f"is {other.status}, not complete"
            raise SpecError(f"activation set {sid!r} {state}; harvest it first",
                            field="sources")  # fmt: skip
        sets[sid] = other
    check_sources(sets, [reads], aset)
    return sets


def dropped_elsewhere(sets: dict[str, ActivationSet]) -> np.ndarray:
    """Rows of the contexts some set dropped (NaN/Inf): every set's reader leaves them
    out, so the sets' rows stay in lockstep (empty for one set)."""
    if len(sets) < 2:
        return np.zeros(0, dtype=np.int64)
    main = next(iter(sets.values()))
    contexts = sorted({c for s in sets.values() for c in s.dropped_contexts()})
    per = np.arange(main.ctx_len, dtype=np.int64)
    return np.concatenate([c * main.ctx_len + per for c in contexts] or [per[:0]])


def scales(sets: dict[str, ActivationSet], keys: tuple[Key, ...]) -> torch.Tensor:
    """[sum of widths]: each source's dimensions scaled by that source's own scale."""
    return torch.cat([torch.full((sets[s].d_model,), float(sets[s].stats[h]["scale"]))
                      for s, h in keys])  # fmt: skip


def token_variance(sets: dict[str, ActivationSet], keys: tuple[Key, ...]) -> float:
    """Per-token variance of the scaled concatenation: the FVU denominator's unit."""
    return sum(float(np.sum(sets[s].stats[h]["var"])) * float(sets[s].stats[h]["scale"]) ** 2
               for s, h in keys)  # fmt: skip


def means(sets: dict[str, ActivationSet], keys: tuple[Key, ...]) -> torch.Tensor:
    """The raw concatenation's mean (the set statistics')."""
    return torch.cat([torch.tensor(sets[s].stats[h]["mean"], dtype=torch.float32)
                      for s, h in keys])  # fmt: skip


def concat(batches: dict[Key, torch.Tensor], keys: tuple[Key, ...]) -> torch.Tensor:
    return batches[keys[0]] if len(keys) == 1 else torch.cat([batches[k] for k in keys], 1)
