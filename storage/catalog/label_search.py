"""Full-text search over labels: FTS5 on SQLite, the tsvector column on PostgreSQL.

Each matching feature appears once, with its newest matching label; results are newest
match first and keyset-paginated on that label's id.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Integer, Select, column, func, select, table, text
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


def _matching_label_ids(session: Session, q: str) -> Select:
    """SELECT of the ids of labels matching `q` (SpecError if `q` is malformed)."""
    query = parse_query(q)
    if session.get_bind().dialect.name == "sqlite":
        match = text("labels_fts MATCH :match").bindparams(match=to_fts5(query))
        return select(_FTS.c.rowid).where(match)
    match = text("labels.text_tsv @@ to_tsquery('english', :tsq)").bindparams(tsq=to_tsquery(query))
    return select(Label.id).where(match)


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
    ids = _matching_label_ids(session, q)
    newest = func.max(Label.id).label("label_id")
    per_feature = select(Label.feature_id, newest).where(Label.id.in_(ids))
    if sae_id is not None:
        per_feature = per_feature.join(Feature, Feature.id == Label.feature_id).where(
            Feature.sae_id == sae_id
        )
    per_feature = per_feature.group_by(Label.feature_id)
    if cursor is not None:
        (after,) = decode_cursor(cursor, "labels:newest", (int,)).key
        per_feature = per_feature.having(func.max(Label.id) < after)
    best = per_feature.subquery()
    query = (
        select(*FEATURE_ROW_COLUMNS, *LABEL_ROW_COLUMNS)
        .select_from(Feature)
        .join(best, best.c.feature_id == Feature.id)
        .join(Label, Label.id == best.c.label_id)
        .order_by(best.c.label_id.desc())
        .limit(limit + 1)
    )
    try:
        split = len(FEATURE_ROW_COLUMNS)
        rows = [
            LabelMatch(FeatureRow(*row[:split]), LabelRow(*row[split:]))
            for row in run(session, query)
        ]
    except OperationalError as exc:
        # parse_query only lets well-formed queries through; this is the safety net for
        # anything FTS5 still refuses, so it is a 422 and never a 500.
        session.rollback()
        if "fts5" in str(exc.orig).lower():
            raise SpecError(f"the search engine refused it: {exc.orig}", field="q") from exc
        raise
    more = len(rows) > limit
    rows = rows[:limit]
    token = encode_cursor(Cursor("labels:newest", (rows[-1].label.id,))) if more else None
    return Page(rows, token)
