"""Full-text search over labels: FTS5 on SQLite, the tsvector column on PostgreSQL.

Each matching feature appears once, with its newest matching label; results are newest
match first and keyset-paginated on that label's id. Matches are read newest first and
the read stops once a page is full, so a word on thousands of labels costs a page's worth.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, Select, column, select, table, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.labels import LABEL_ROW_COLUMNS, LabelRow
from saefeat.storage.catalog.models import Feature, Label
from saefeat.storage.catalog.queries import (
    FEATURE_ROW_COLUMNS,
    MAX_PAGE,
    FeatureRow,
    Page,
    require_sae,
    run,
)
from saefeat.storage.catalog.search_syntax import parse_query, to_fts5, to_tsquery

# The FTS5 table of revision 0002 (SQLite only, so not an ORM model).
_FTS = table("labels_fts", column("rowid", Integer))


@dataclass
class LabelMatch:
    feature: FeatureRow
    label: LabelRow  # the newest label of the feature that matched


def _matches(session: Session, q: str, sae_id: str | None) -> tuple[Select, ColumnElement]:
    """SELECT (label id, feature id) of the labels matching `q`, newest first, and the
    label-id column to page on (SpecError if `q` is malformed)."""
    query = parse_query(q)
    if session.get_bind().dialect.name == "sqlite":
        # Driven by the FTS5 table, which yields its matches by rowid in either order.
        match = text("labels_fts MATCH :match").bindparams(match=to_fts5(query))
        label_id = _FTS.c.rowid
        matches = select(label_id, Label.feature_id).join(Label, Label.id == label_id)
    else:
        match = text("labels.text_tsv @@ to_tsquery('english', :tsq)").bindparams(
            tsq=to_tsquery(query)
        )
        label_id = Label.id
        matches = select(label_id, Label.feature_id)
    matches = matches.where(match)
    if sae_id is not None:
        matches = matches.join(Feature, Feature.id == Label.feature_id).where(
            Feature.sae_id == sae_id
        )
    return matches.order_by(label_id.desc()), label_id


FIRST_BATCH, MAX_BATCH = 64, 4096


def _newest_per_feature(
    session: Session, matches: Select, label_id: ColumnElement, limit: int, after: int | None
) -> list[int]:
    """Ids of the newest matching label of each of the first `limit` + 1 features, in
    newest-first order, reading matches newest first in growing batches and stopping as
    soon as there are enough: a common word costs a few batches, not all its matches.

    After a cursor, a feature counts only if its newest match is below it (features whose
    newest match is at or above it were on an earlier page), so matches above the cursor
    are still read, to learn which features those were."""
    seen: set[int] = set()
    picked: list[int] = []
    batch, below = FIRST_BATCH, None
    while True:
        query = matches if below is None else matches.where(label_id < below)
        rows = run(session, query.limit(batch)).all()
        for lid, fid in rows:
            if fid in seen:
                continue
            seen.add(fid)
            if after is None or lid < after:
                picked.append(lid)
                if len(picked) > limit:
                    return picked
        if len(rows) < batch:
            return picked
        below, batch = rows[-1][0], min(batch * 4, MAX_BATCH)


def search_labels(
    session: Session,
    q: str,
    *,
    sae_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[LabelMatch]:
    """Features with a label matching `q` (see search_syntax), newest match first."""
    if not 1 <= limit <= MAX_PAGE:
        raise SpecError(f"is {limit}; use 1..{MAX_PAGE}", field="limit")
    if sae_id is not None:
        require_sae(session, sae_id)
    after = None
    if cursor is not None:
        (after,) = decode_cursor(cursor, "labels:newest", (int,)).key
    matches, label_id = _matches(session, q, sae_id)
    try:
        picked = _newest_per_feature(session, matches, label_id, limit, after)
    except OperationalError as exc:
        # parse_query only lets well-formed queries through; this is the safety net for
        # anything FTS5 still refuses, so it is a 422 and never a 500.
        session.rollback()
        if "fts5" in str(exc.orig).lower():
            raise SpecError(f"the search engine refused it: {exc.orig}", field="q") from exc
        raise
    query = (
        select(*FEATURE_ROW_COLUMNS, *LABEL_ROW_COLUMNS)
        .select_from(Label)
        .join(Feature, Feature.id == Label.feature_id)
        .where(Label.id.in_(picked))
        .order_by(Label.id.desc())
    )
    split = len(FEATURE_ROW_COLUMNS)
    rows = [
        LabelMatch(FeatureRow(*row[:split]), LabelRow(*row[split:])) for row in run(session, query)
    ]
    more = len(rows) > limit
    rows = rows[:limit]
    token = encode_cursor(Cursor("labels:newest", (rows[-1].label.id,))) if more else None
    return Page(rows, token)
