"""Activation sets in the catalog: the rows that mirror a harvested Zarr set.

The Zarr group and its shard commit files stay the truth readers use; these rows let the
catalog list sets and join SAEs to the model and hooks they were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from saefeat.storage.catalog.models import (
    SAE,
    ActivationSetRow,
    ActivationShard,
    LanguageModelRow,
)

if TYPE_CHECKING:  # the API reads sae_model without loading Zarr and torch
    from saefeat.storage.activations import ActivationSet


def _model_row(session: Session, aset: ActivationSet) -> LanguageModelRow:
    """The row of the set's (model name, revision), created on first sight. Two revisions
    of one name are two models: their weights, and so their activations, differ."""
    # `== None` renders IS NULL: the default revision is a key value like any other.
    row = session.scalar(
        select(LanguageModelRow).where(
            LanguageModelRow.name == aset.model_name, LanguageModelRow.revision == aset.revision
        )
    )
    if row is None:
        # 0: a set harvested before its model's layer count was stored.
        row = LanguageModelRow(name=aset.model_name, revision=aset.revision,
                               d_model=aset.d_model, n_layers=aset.n_layers or 0)  # fmt: skip
        session.add(row)
        session.flush()
    return row


def sae_model(session: Session, sae: SAE) -> tuple[str, str | None]:
    """(model name, revision) an SAE's activations came from: the revision of its
    activation set's model row; None (the default weights) when it has no set on record."""
    set_row = None
    if sae.activation_set_id is not None:
        set_row = session.get(ActivationSetRow, sae.activation_set_id)
    return sae.model_name, set_row.model.revision if set_row is not None else None


@dataclass(frozen=True)
class SetOrigin:
    """What the catalog records of where a set's activations came from."""

    model_name: str  # as the harvest spec named it (the embedded alias, a hub id, a path)
    revision: str | None
    ctx_len: int


def set_origin(session: Session, set_id: str | None) -> SetOrigin | None:
    """The model, revision and context length of activation set `set_id`; None when the
    catalog has no such set (an imported SAE, or a set harvested before the catalog)."""
    row = session.get(ActivationSetRow, set_id) if set_id else None
    if row is None:
        return None
    return SetOrigin(row.model.name, row.model.revision, row.ctx_len)


def record_activation_set(session: Session, aset: ActivationSet) -> None:
    """Mirror a set and its committed shards into the catalog. The caller commits."""
    row = session.get(ActivationSetRow, aset.id) or ActivationSetRow(id=aset.id)
    row.model_id = _model_row(session, aset).id
    row.hook_names = aset.hooks
    row.ctx_len = aset.ctx_len
    row.n_contexts = aset.n_contexts
    row.n_tokens = aset.n_tokens
    row.dtype = aset.storage_dtype
    row.path = str(aset.path)
    row.status = aset.status
    row.stats = {h: {k: v for k, v in st.items() if k not in ("mean", "var")}
                 for h, st in (aset.stats or {}).items()}  # fmt: skip
    session.merge(row)
    session.flush()
    have = set(session.scalars(select(ActivationShard.shard_index)
                               .where(ActivationShard.set_id == aset.id)))  # fmt: skip
    for shard in aset.committed_shards():
        if shard not in have:
            c = aset.commit_record(shard)
            session.add(ActivationShard(set_id=aset.id, shard_index=shard, rows=c.rows,
                                           checksum=str(c.checksums)))  # fmt: skip
