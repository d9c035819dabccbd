"""Which tokens of an activation set count, and which document each token belongs to.

A set records, per context, the document it starts in and the offset there
(`doc_index`, `doc_offset`). Contexts are cut back to back from one token stream, so
each recorded start fixes where that document begins in the stream, and every token
belongs to the last document that began at or before it. A document that starts and
ends inside one context (shorter than a context, and no context starts in it) is not
visible in these records and its tokens go to the document before it: both come from
the same corpus, so the unit is longer but never mislabelled. Units are what the
contrast's statistics and classifier call documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saefeat.storage.activations import ActivationSet

MIN_DOCUMENTS = 2  # a side's documents (units), the unit every statistic counts


def counted_token_rows(aset: ActivationSet, shard: int) -> np.ndarray:
    """Row offsets inside a committed shard that can count: not position 0 (an attention
    sink), not dropped contexts. `document_layout` also leaves out the rows the SAE's
    token rule marks massive (storage/exclusion.py)."""
    return aset.kept_rows(shard, skip_first_position=True)


@dataclass
class DocumentLayout:
    unit: np.ndarray  # int32 [n_tokens]: the document (unit) of each token of the set
    counted: np.ndarray  # bool [n_tokens]: the token counts (committed, not left out)
    in_window: np.ndarray  # bool [n_tokens]: counted and among its unit's first `window`
    n_units: int


def _first_body_token(aset: ActivationSet) -> int:
    return 1 if aset.spec.get("bos", "context") == "context" else 0  # the BOS of a context


def document_starts(aset: ActivationSet) -> np.ndarray:
    """Stream positions where the set's recorded documents (units) begin, ascending."""
    body = aset.ctx_len - _first_body_token(aset)
    doc_offset = np.asarray(aset.group["doc_offset"][:], np.int64)
    return np.unique(np.arange(aset.n_contexts) * body - doc_offset)


def document_layout(aset: ActivationSet, window: int, massive: np.ndarray) -> DocumentLayout:
    """`massive`: absolute rows the SAE's token rule leaves out beyond position 0."""
    ctx_len, n_ctx = aset.ctx_len, aset.n_contexts
    first = _first_body_token(aset)
    body = ctx_len - first
    # Stream position of every token; a context's BOS takes its first body token's.
    pos = np.arange(n_ctx)[:, None] * body + np.maximum(np.arange(ctx_len) - first, 0)[None, :]
    starts = document_starts(aset)
    unit = (np.searchsorted(starts, pos.ravel(), side="right") - 1).clip(min=0).astype(np.int32)

    counted = np.zeros(n_ctx * ctx_len, bool)
    for s in aset.committed_shards():
        r0, _ = aset.shard_rows(s)
        counted[r0 + counted_token_rows(aset, s)] = True
    counted[massive] = False
    # Rank of each counted token inside its unit (units are contiguous in row order).
    seen = np.cumsum(counted)
    unit_first_row = np.searchsorted(unit, np.arange(len(starts)))
    unit_first_row = np.minimum(unit_first_row, len(unit) - 1)
    before = seen[unit_first_row] - counted[unit_first_row]
    rank = seen - 1 - before[unit]
    return DocumentLayout(unit, counted, counted & (rank < window), len(starts))
