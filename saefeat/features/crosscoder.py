"""A crosscoder downstream of training: how indexing reads its sources, what it stores
per feature, and where the one-model-one-hook features refuse it.

Indexing encodes the concatenation of the sources' activations, shard by shard: the
sources' sets hold the same tokens in the same contexts and shards (a paired harvest, or
one set's hooks), so a shard's rows of every source are the same tokens. A row counts
nowhere when any source's token rule leaves it out (each source's rule from its own set's
median norm, at the threshold the crosscoder was trained with) or when a context of it
was dropped in any set (`training.sources.dropped_elsewhere`). The examples' tokens are
the first source's set's (identical in all).

Per feature the index stores the decoder norm in each source, and with two sources the
relative norm ||d_B|| / (||d_A|| + ||d_B||) and its class (saefeat/sae/crosscoder.py).

The vocabulary projection, the logit histogram and the de-biased projection read one
decoder row per feature through the FIRST source's model's unembedding: its row in the
source it writes most to (`dominant_rows`: a B-only latent's A part is ~0, so its A row
would project noise), when the sources are of one width (one model's layers, or two
models of one width); when the widths differ, its row in the first source's slice, the
only one that model's unembedding can read. The measured effect (removing the feature
and running the rest of one model) has no meaning for a dictionary spanning models or
layers, so a crosscoder has none (features/effects.py). Neighbours and the map use the
whole decoder rows.

Live encoding, steering, contrasts and Patchscope run one model at one hook: each refuses
a crosscoder with a 422 naming its field (`refuse_crosscoder`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from saefeat.errors import NotFoundError, SpecError

if TYPE_CHECKING:
    import torch

    from saefeat.sae.base import SAEConfig
    from saefeat.storage.activations import ActivationSet
    from saefeat.storage.exclusion import TokenRule


def crosscoder_sources(sources: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The sources of a crosscoder (two or more), else [] (an SAE or a transcoder)."""
    return list(sources) if sources and len(sources) >= 2 else []


def source_kinds(sources: list[dict[str, Any]]) -> str:
    """What a crosscoder's sources are, in a word: models (sets of several models) or
    layers (hooks of one model)."""
    models = {(s.get("model"), s.get("revision")) for s in sources}
    sets = {s.get("activation_set") for s in sources}
    return "models" if len(models) > 1 or len(sets) > 1 else "layers"


def refuse_crosscoder(sources: list[dict[str, Any]] | None, what: str, field: str) -> None:
    """A SpecError naming `field` (422) when `sources` (an SAE's cfg `sources`) are a
    crosscoder's: `what` runs one model at one hook."""
    found = crosscoder_sources(sources)
    if found:
        raise SpecError(
            f"a crosscoder spans {len(found)} sources ({source_kinds(found)}); {what} runs "
            "one model at one hook",
            field=field,
        )


# ---- what indexing reads ---------------------------------------------------------------


@dataclass(frozen=True)
class SourceSets:
    """A crosscoder's sources as indexing reads them, in the cfg's order: each one's set,
    hook, token rule and width, and the rows of the contexts any of the sets dropped."""

    sets: tuple[ActivationSet, ...]
    hooks: tuple[str, ...]
    rules: tuple[TokenRule, ...]
    widths: tuple[int, ...]
    dropped: np.ndarray  # absolute rows, sorted

    @property
    def main(self) -> ActivationSet:
        """The first source's set: the examples' tokens, the model of the projections."""
        return self.sets[0]

    def committed_shards(self) -> list[int]:
        """The shards every source's set has committed (all of them, for complete sets)."""
        shards = set(self.main.committed_shards())
        for aset in self.sets[1:]:
            shards &= set(aset.committed_shards())
        return sorted(shards)

    def read_shard(self, shard: int) -> torch.Tensor:
        """[rows, sum of widths]: the shard's rows of every source, concatenated."""
        import torch

        return torch.cat([s.read_shard(shard, h) for s, h in zip(self.sets, self.hooks,
                                                                 strict=True)], 1)  # fmt: skip

    def read_contexts(self, contexts: np.ndarray) -> torch.Tensor:
        """[n, ctx_len, sum of widths]: whole contexts of the concatenation (sorted ids
        read a shard at a time)."""
        import torch

        main, out, shard, rows = self.main, [], -1, None
        for c in np.asarray(contexts).tolist():
            if c // main.contexts_per_shard != shard:
                shard = c // main.contexts_per_shard
                rows = self.read_shard(shard).reshape(-1, main.ctx_len, sum(self.widths))
            out.append(rows[c - main.shard_contexts(shard)[0]])
        return torch.stack(out)

    def excluded_rows(self, x: torch.Tensor, positions: torch.Tensor, first_row: int
                      ) -> torch.Tensor:  # fmt: skip
        """bool [rows] of a batch of the concatenation starting at absolute row
        `first_row`: left out by some source's token rule, or in a dropped context."""
        import torch

        from saefeat.sae.crosscoder import source_slices

        out = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for part, rule in zip(source_slices(list(self.widths)), self.rules, strict=True):
            out |= rule.excluded_rows(x[:, part], positions)
        if len(self.dropped):
            rows = np.arange(first_row, first_row + x.shape[0])
            out |= torch.from_numpy(np.isin(rows, self.dropped)).to(x.device)
        return out


def open_source_sets(cfg: SAEConfig, activations_dir: Path,
                     opened: ActivationSet | None = None) -> SourceSets:  # fmt: skip
    """The sets of a crosscoder's sources under `activations_dir` (`opened`, one of them
    already open, is reused); SpecError naming `sources` when one is missing or does not
    hold the first one's contexts."""
    from saefeat.features.token_rule import source_token_rules
    from saefeat.storage.activations import open_set
    from saefeat.training.sources import dropped_elsewhere

    by_id: dict[str, ActivationSet] = {opened.id: opened} if opened is not None else {}
    for source in cfg.sources or []:
        sid = source["activation_set"]
        if sid not in by_id:
            try:
                by_id[sid] = open_set(activations_dir, sid)
            except (NotFoundError, SpecError):
                raise SpecError(f"the crosscoder's source set {sid!r} is not under "
                                f"{activations_dir}", field="sources") from None  # fmt: skip
    sets = tuple(by_id[s["activation_set"]] for s in cfg.sources or [])
    main = sets[0]
    for aset in sets[1:]:
        if (aset.n_contexts, aset.ctx_len, aset.contexts_per_shard) != (
                main.n_contexts, main.ctx_len, main.contexts_per_shard):  # fmt: skip
            raise SpecError(f"set {aset.id} is not laid out as set {main.id}: a crosscoder's "
                            "sets hold the same contexts in the same shards",
                            field="sources")  # fmt: skip
    hooks = tuple(s["hook"] for s in cfg.sources or [])
    used = {s.id: s for s in sets}
    return SourceSets(sets, hooks, tuple(source_token_rules(cfg, list(sets))),
                      tuple(cfg.source_widths), dropped_elsewhere(used))  # fmt: skip


# ---- what indexing stores ----------------------------------------------------------------


@dataclass(frozen=True)
class CrosscoderColumns:
    """FeatureIndex's crosscoder fields: norms [d_sae, n]; with two sources the relative
    norms [d_sae] and each feature's class, else None for both."""

    decoder_norms: np.ndarray
    relative_norms: np.ndarray | None
    sharing: list[str] | None


def crosscoder_columns(W_dec: torch.Tensor, widths: list[int],
                       scales: list[float] | None = None) -> CrosscoderColumns:  # fmt: skip
    """In training units (sae/crosscoder.py: raw norms lean towards the louder source)."""
    from saefeat.sae.crosscoder import decoder_norms, in_training_units, relative_norm, sharing

    norms = decoder_norms(in_training_units(W_dec.detach(), widths, scales), widths)
    rel = relative_norm(norms)
    return CrosscoderColumns(
        norms.double().cpu().numpy(),
        None if rel is None else rel.double().cpu().numpy(),
        None if rel is None else [sharing(float(r)) for r in rel],
    )


def projected_rows(W_dec: torch.Tensor, widths: list[int],
                   scales: list[float] | None = None) -> torch.Tensor:  # fmt: skip
    """[d_sae, width] the row of each feature the projections read (module docstring):
    its dominant source's row for sources of one width, else its first source's."""
    from saefeat.sae.crosscoder import dominant_rows, source_slices

    if len(set(widths)) == 1:
        return dominant_rows(W_dec, widths, scales)
    return W_dec[:, source_slices(widths)[0]]
