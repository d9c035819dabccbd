"""Writing one SAE's FeatureIndex into the catalog, replacing the previous one atomically.

Feature rows are updated in place (matched on (sae_id, index)) rather than deleted and
re-created, so their ids, and the labels hanging off them, survive re-indexing; the
derived rows (examples, vocabulary projection, neighbours) are deleted and bulk-inserted.
Everything happens in one transaction: readers see the old index or the new one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import JSON, Table, delete, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from saefeat.errors import NotFoundError, SpecError
from saefeat.features.records import FeatureExample, FeatureIndex, TokenEffects, VocabProjection
from saefeat.storage.catalog.models import (
    EFFECT_METHODS,
    EXAMPLE_KINDS,
    SAE,
    Base,
    Feature,
    FeatureExampleRow,
    FiredToken,
    Neighbour,
    TokenEffect,
    VocabToken,
)

TOKEN_STR_MAX = 200  # matches vocab_tokens.token_str
# Bulk inserts go in slices so one executemany does not hold every row's JSON at once.
BATCH_ROWS = 20_000


@dataclass(frozen=True)
class IndexWriteSummary:
    sae_id: str
    n_features: int
    n_examples: int
    n_vocab_tokens: int
    n_neighbours: int = 0
    n_token_effects: int = 0


def _finite_list(values: Sequence[float], field: str) -> list[float]:
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise SpecError("contains NaN or infinity; only finite values can be stored", field=field)
    return array.tolist()


def _stat(array: np.ndarray, field: str, d_sae: int) -> list[float]:
    array = np.asarray(array, dtype=np.float64).reshape(-1)
    if array.shape[0] != d_sae:
        raise SpecError(f"has {array.shape[0]} entries, expected d_sae={d_sae}", field=field)
    if np.isinf(array).any():
        raise SpecError("contains infinity", field=field)
    # NaN comes from a mean over zero firings: a feature that never fired reports 0.
    return np.nan_to_num(array, nan=0.0).tolist()


def _histograms(index: FeatureIndex) -> list[dict[str, Any] | None]:
    if index.histograms is None:
        return [None] * index.d_sae
    counts = np.asarray(index.histograms)
    if counts.ndim != 2 or counts.shape[0] != index.d_sae:
        raise SpecError(f"must have shape [d_sae={index.d_sae}, n_bins]", field="histograms")
    if index.histogram_edges is None:
        raise SpecError("histograms need histogram_edges", field="histogram_edges")
    edges = _finite_list(np.asarray(index.histogram_edges).reshape(-1), "histogram_edges")
    if len(edges) != counts.shape[1] + 1:
        raise SpecError(f"must have n_bins + 1 = {counts.shape[1] + 1} entries", field="edges")
    return [{"edges": edges, "counts": row} for row in counts.tolist()]


def _feature_rows(index: FeatureIndex, d_sae: int) -> list[dict[str, Any]]:
    if index.d_sae != d_sae:
        raise SpecError(f"is {index.d_sae} but the SAE has d_sae={d_sae}", field="d_sae")
    density = _stat(index.density, "density", d_sae)
    max_act = _stat(index.max_activation, "max_activation", d_sae)
    mean_act = _stat(index.mean_activation, "mean_activation", d_sae)
    histograms = _histograms(index)
    _add_histogram_extras(histograms, index)
    artifacts = _artifact_reasons(index)
    umap_x, umap_y = _umap(index)
    norms, relative, sharing = _crosscoder(index, d_sae)
    return [
        {
            "index": i,
            "density": density[i],
            "max_activation": max_act[i],
            "mean_activation": mean_act[i],
            "histogram": histograms[i],
            "artifact": artifacts[i],
            "umap_x": umap_x[i],
            "umap_y": umap_y[i],
            "decoder_norms": norms[i],
            "relative_norm": relative[i],
            "sharing": sharing[i],
        }
        for i in range(d_sae)
    ]


def _crosscoder(index: FeatureIndex, d_sae: int) -> tuple[list, list, list]:
    """Per feature: decoder norms per source, relative norm, class (None: not a crosscoder)."""
    none = [None] * d_sae
    if index.decoder_norms is None:
        return none, none, none
    norms = np.asarray(index.decoder_norms, dtype=np.float64)
    if norms.ndim != 2 or norms.shape[0] != d_sae or not np.isfinite(norms).all():
        raise SpecError(f"has shape {list(norms.shape)}, expected [d_sae, sources] of finite "
                        "values", field="decoder_norms")  # fmt: skip
    relative = none
    if index.relative_norms is not None:
        relative = _stat(index.relative_norms, "relative_norms", d_sae)
    sharing = list(index.sharing) if index.sharing is not None else none
    if len(sharing) != d_sae:
        raise SpecError(f"has {len(sharing)} entries, expected d_sae", field="sharing")
    return norms.tolist(), relative, sharing


def _umap(index: FeatureIndex) -> tuple[list[float | None], list[float | None]]:
    """Each feature's place on the map (features/umap_map.py); None for both where the
    index has none (no map, or a NaN row: an import that placed only some features)."""
    if index.umap is None:
        return [None] * index.d_sae, [None] * index.d_sae
    xy = np.asarray(index.umap, dtype=np.float64)
    if xy.shape != (index.d_sae, 2):
        raise SpecError(f"has shape {list(xy.shape)}, expected [d_sae, 2]", field="umap")
    if np.isinf(xy).any():
        raise SpecError("contains infinity", field="umap")
    placed = ~np.isnan(xy).any(axis=1)
    x = [float(v) if ok else None for v, ok in zip(xy[:, 0].tolist(), placed, strict=True)]
    y = [float(v) if ok else None for v, ok in zip(xy[:, 1].tolist(), placed, strict=True)]
    return x, y


# ---- readable-feature extras (issue 21): artifact reason, histogram extras, fired tokens


def _artifact_reasons(index: FeatureIndex) -> list[str | None]:
    if index.artifacts is None:
        return [None] * index.d_sae
    if len(index.artifacts) != index.d_sae:
        raise SpecError(f"has {len(index.artifacts)} entries, expected d_sae", field="artifacts")
    width = Feature.__table__.c.artifact.type.length
    return [str(a)[:width] if a else None for a in index.artifacts]


def _add_histogram_extras(histograms: list[dict[str, Any] | None], index: FeatureIndex) -> None:
    """Into each stored activation histogram: how many activation bins the quantile
    samples come from, and the direct-path logit histogram (features/logit_histogram.py)."""
    logits = index.logit_histograms
    if logits is not None:
        counts = np.asarray(logits)
        ranges = np.asarray(index.logit_ranges, dtype=np.float64)
        if counts.ndim != 2 or counts.shape[0] != index.d_sae or ranges.shape != (index.d_sae, 2):
            raise SpecError("must be [d_sae, bins] with logit_ranges [d_sae, 2]",
                            field="logit_histograms")  # fmt: skip
        if not np.isfinite(ranges).all():
            raise SpecError("contains NaN or infinity", field="logit_ranges")
    for i, histogram in enumerate(histograms):
        if histogram is None:
            continue
        if index.n_quantile_bins:
            histogram["quantile_bins"] = int(index.n_quantile_bins)
        if logits is not None:
            lo, hi = ranges[i].tolist()
            histogram["logits"] = {"min": lo, "max": hi, "counts": counts[i].tolist()}


def _fired_rows(index: FeatureIndex, d_sae: int) -> list[dict[str, Any]]:
    rows = []
    for n, t in enumerate(index.fired_tokens):
        _check_feature(t.feature_index, d_sae, f"fired_tokens[{n}].feature_index")
        if not (math.isfinite(t.share) and 0 < t.share <= 1):
            raise SpecError("share must be in (0, 1]", field=f"fired_tokens[{n}].share")
        rows.append({"feature_index": t.feature_index, "rank": int(t.rank),
                     "token_str": _clean_token(t.token_str), "share": float(t.share)})  # fmt: skip
    return rows


def _check_feature(i: int, d_sae: int, field: str) -> None:
    if not 0 <= i < d_sae:
        raise SpecError(f"is {i}, outside 0..{d_sae - 1}", field=field)


def _example_rows(examples: Sequence[FeatureExample], d_sae: int) -> list[dict[str, Any]]:
    """feature_examples rows: the record's fields under the same names, checked and as
    plain Python values (feature_index becomes feature_id once the ids are known)."""
    rows = []
    for n, ex in enumerate(examples):
        where = f"examples[{n}]"
        _check_feature(ex.feature_index, d_sae, f"{where}.feature_index")
        if ex.kind not in EXAMPLE_KINDS:
            raise SpecError(f"is {ex.kind!r}; use one of {list(EXAMPLE_KINDS)}", field=where)
        width = len(ex.token_ids)
        if len(ex.token_strs) != width or len(ex.values) != width:
            raise SpecError("token_ids, token_strs and values differ in length", field=where)
        if not 0 <= ex.focus < max(width, 1):
            raise SpecError(f"focus {ex.focus} is outside the window", field=f"{where}.focus")
        if not math.isfinite(ex.activation):
            raise SpecError("is not finite", field=f"{where}.activation")
        rows.append(
            {
                "feature_index": ex.feature_index,  # becomes feature_id once ids are known
                "kind": ex.kind,
                "rank": int(ex.rank),
                "activation": float(ex.activation),
                "context_index": int(ex.context_index),
                "position": int(ex.position),
                "focus": int(ex.focus),
                "token_ids": np.asarray(ex.token_ids, dtype=np.int64).tolist(),
                "token_strs": [str(s) for s in ex.token_strs],
                "values": _finite_list(ex.values, f"{where}.values"),
            }
        )
    return rows


def _clean_token(text: str) -> str:
    # PostgreSQL text cannot hold NUL; show it as the visible "symbol for null" instead.
    return str(text).replace("\x00", "\u2400")[:TOKEN_STR_MAX]


def _vocab_rows(projections: Sequence[VocabProjection], d_sae: int) -> list[dict[str, Any]]:
    rows = []
    for n, proj in enumerate(projections):
        where = f"projections[{n}]"
        _check_feature(proj.feature_index, d_sae, f"{where}.feature_index")
        sides = (("top", proj.top_ids, proj.top_strs, proj.top_values),
                 ("bottom", proj.bottom_ids, proj.bottom_strs, proj.bottom_values))  # fmt: skip
        rows += _ranked_token_rows(where, sides, feature_index=proj.feature_index)
    return rows


def _ranked_token_rows(
    where: str, sides: Iterable[tuple[str, Sequence, Sequence, Sequence]], **key: Any
) -> list[dict[str, Any]]:
    """Rows of ranked token lists (vocab_tokens, token_effects): for each (side, ids, strs,
    values) of `sides`, one row per entry, rank 0 first, each with the `key` columns."""
    rows = []
    for side, tok_ids, strs, values in sides:
        if not len(tok_ids) == len(strs) == len(values):
            raise SpecError(f"{side} ids, strs and values differ in length", field=where)
        clean = _finite_list(values, f"{where}.{side}_values")
        rows.extend(
            {
                **key,
                "side": side,
                "rank": rank,
                "token_id": int(tok),
                "token_str": _clean_token(text),
                "value": value,
            }
            for rank, (tok, text, value) in enumerate(zip(tok_ids, strs, clean, strict=True))
        )
    return rows


def _effect_rows(effects: Sequence[TokenEffects], d_sae: int) -> list[dict[str, Any]]:
    """token_effects rows: each ranking's up and down lists, rank 0 strongest."""
    rows = []
    seen: set[tuple[int, str]] = set()
    for n, eff in enumerate(effects):
        where = f"effects[{n}]"
        _check_feature(eff.feature_index, d_sae, f"{where}.feature_index")
        if eff.method not in EFFECT_METHODS:
            raise SpecError(f"is {eff.method!r}; use one of {list(EFFECT_METHODS)}",
                            field=f"{where}.method")  # fmt: skip
        if (eff.feature_index, eff.method) in seen:
            raise SpecError(f"feature {eff.feature_index} has two {eff.method!r} rankings",
                            field=where)  # fmt: skip
        seen.add((eff.feature_index, eff.method))
        sides = (("up", eff.up_ids, eff.up_strs, eff.up_values),
                 ("down", eff.down_ids, eff.down_strs, eff.down_values))  # fmt: skip
        rows += _ranked_token_rows(where, sides, feature_index=eff.feature_index, method=eff.method)
    return rows


def _neighbour_pairs(index: FeatureIndex) -> list[tuple[int, int, int, float]]:
    """(feature, rank, neighbour, cosine) for every stored neighbour; -1 marks no neighbour."""
    if index.neighbour_indices is None:
        return []
    near = np.asarray(index.neighbour_indices, dtype=np.int64)
    cos = np.asarray(index.neighbour_cosines, dtype=np.float64)
    if near.ndim != 2 or near.shape[0] != index.d_sae or cos.shape != near.shape:
        raise SpecError(
            f"neighbour_indices and neighbour_cosines must both be [d_sae={index.d_sae}, n]",
            field="neighbour_indices",
        )
    if near.max(initial=-1) >= index.d_sae or near.min(initial=0) < -1:
        raise SpecError(f"must hold -1 or 0..{index.d_sae - 1}", field="neighbour_indices")
    keep = near >= 0
    if not np.isfinite(cos[keep]).all():
        raise SpecError("contains NaN or infinity", field="neighbour_cosines")
    f, rank = np.nonzero(keep)
    return list(
        zip(f.tolist(), rank.tolist(), near[keep].tolist(), cos[keep].tolist(), strict=True)
    )


def _neighbour_rows(pairs, ids: dict[int, int]) -> list[dict[str, Any]]:
    return [
        {"feature_id": ids[f], "rank": r, "neighbour_feature_id": ids[n], "cosine": c}
        for f, r, n, c in pairs
    ]


def _attach_ids(rows: list[dict[str, Any]], ids: dict[int, int]) -> list[dict[str, Any]]:
    for row in rows:
        row["feature_id"] = ids[row.pop("feature_index")]
    return rows


def _copy_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY: psycopg's executemany sends one statement per row, about 2x slower."""
    names = [c.name for c in table.columns if c.name in rows[0]]
    json_names = {c.name for c in table.columns if isinstance(c.type, JSON)}
    encode = [json.dumps if n in json_names else None for n in names]
    column_list = ", ".join(f'"{n}"' for n in names)
    statement = f'COPY "{table.name}" ({column_list}) FROM STDIN'
    connection = session.connection()
    dbapi_error = connection.dialect.loaded_dbapi.Error
    try:
        with connection.connection.driver_connection.cursor() as cursor:
            with cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(
                        [f(row[n]) if f else row[n] for n, f in zip(names, encode, strict=True)]
                    )
    except dbapi_error as exc:
        # Same exception types as the executemany path (IntegrityError, ...).
        raise DBAPIError.instance(statement, None, exc, dbapi_error) from exc


def _bulk_insert(session: Session, model: type[Base], rows: list[dict[str, Any]]) -> None:
    # Core insert on the table: the ORM's per-row bookkeeping would cost more than the
    # database itself, and these rows are never loaded back into this session.
    if not rows:
        return
    table = model.__table__
    if session.get_bind().dialect.driver == "psycopg":
        _copy_rows(session, table, rows)
        return
    for start in range(0, len(rows), BATCH_ROWS):
        session.execute(insert(table), rows[start : start + BATCH_ROWS])


def _feature_ids(session: Session, sae_id: str) -> dict[int, int]:
    query = select(Feature.index, Feature.id).where(Feature.sae_id == sae_id)
    return {index: fid for index, fid in session.execute(query)}


def write_feature_index(session: Session, sae_id: str, index: FeatureIndex) -> IndexWriteSummary:
    """Replace the stored index of SAE `sae_id` with `index`, in one transaction, and commit.

    Input is checked before anything is written (SpecError naming the field); a database
    error rolls the whole write back. Other pending work in `session` shares the
    transaction: committed with it, or rolled back with it. Labels are kept (they belong
    to the latent, not to the index).
    """
    sae = session.get(SAE, sae_id)
    if sae is None:
        raise NotFoundError(f"no SAE with id {sae_id!r}; register it first", field="sae_id")
    # Every check runs before the first write, so bad input leaves the old index intact.
    feature_rows = _feature_rows(index, sae.d_sae)
    examples = _example_rows(index.examples, sae.d_sae)
    vocab = _vocab_rows(index.projections, sae.d_sae)
    neighbours = _neighbour_pairs(index)
    effects = _effect_rows(index.effects, sae.d_sae)
    fired = _fired_rows(index, sae.d_sae)
    try:
        existing = _feature_ids(session, sae_id)
        old_ids = select(Feature.id).where(Feature.sae_id == sae_id).scalar_subquery()
        for model in (FeatureExampleRow, VocabToken, Neighbour, FiredToken, TokenEffect):
            session.execute(
                delete(model).where(model.feature_id.in_(old_ids)),
                execution_options={"synchronize_session": False},
            )
        updates = [
            {"id": existing[r["index"]], **r} for r in feature_rows if r["index"] in existing
        ]
        inserts = [{"sae_id": sae_id, **r} for r in feature_rows if r["index"] not in existing]
        if updates:
            session.execute(update(Feature), updates)
        _bulk_insert(session, Feature, inserts)
        ids = _feature_ids(session, sae_id) if inserts else existing
        _bulk_insert(session, FeatureExampleRow, _attach_ids(examples, ids))
        _bulk_insert(session, VocabToken, _attach_ids(vocab, ids))
        _bulk_insert(session, TokenEffect, _attach_ids(effects, ids))
        _bulk_insert(session, Neighbour, _neighbour_rows(neighbours, ids))
        _bulk_insert(session, FiredToken, _attach_ids(fired, ids))
        session.commit()
        # Bulk DELETE/INSERT bypass the identity map and our sessions do not expire on
        # commit: forget loaded rows so nothing of the old index is read from memory.
        session.expire_all()
    except BaseException:
        session.rollback()
        raise
    return IndexWriteSummary(
        sae_id, len(feature_rows), len(examples), len(vocab), len(neighbours), len(effects)
    )
