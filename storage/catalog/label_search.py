"""Full-text search over labels: FTS5 on SQLite, the tsvector column on PostgreSQL.

Each matching feature appears once, with its newest matching label; results are newest
match first and keyset-paginated on that label's id. Matches are read newest first and
the read stops once a page is full, so a word on thousands of labels costs a page's worth.
A page deep into a very common query would read every match above it, so a request
reads at most `max_scan` matches and then answers with what it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, Select, column, func, select, table, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.labels import LABEL_ROW_COLUMNS, LabelView
from saefeat.storage.catalog.models import Feature, Label
from saefeat.storage.catalog.queries import (
    FEATURE_VIEW_COLUMNS,
    FeatureView,
    Page,
    check_search,
    run,
)
from saefeat.storage.catalog.search_syntax import parse_query, to_fts5, to_tsquery

# The FTS5 table of revision 0002 (SQLite only, so not an ORM model).
_FTS = table("labels_fts", column("rowid", Integer))


@dataclass
class LabelMatch:
    feature: FeatureView
    label: LabelView  # the newest label of the feature that matched


def _match_condition(session: Session, q: str) -> tuple[ColumnElement, ColumnElement, Select]:
    """The WHERE clause matching `q` (SpecError if malformed), the label-id column to order
    and page on, and the bare SELECT (label id, feature id) it applies to."""
    query = parse_query(q)
    if session.get_bind().dialect.name == "sqlite":
        # Driven by the FTS5 table, which yields its matches by rowid in either order.
        match = text("labels_fts MATCH :match").bindparams(match=to_fts5(query))
        label_id = _FTS.c.rowid
        return match, label_id, select(label_id, Label.feature_id).join(Label, Label.id == label_id)
    match = text("labels.text_tsv @@ to_tsquery('english', :tsq)").bindparams(tsq=to_tsquery(query))
    return match, Label.id, select(Label.id, Label.feature_id)


FIRST_BATCH, MAX_BATCH = 64, 4096
MAX_SCAN = 20_000  # matches one request reads at most (docs/SECURITY.md, fixed limits)
# PostgreSQL: how many of the newest label ids are scanned in id order before the GIN index
# takes over (see _matches_newest_first).
RECENT_LABELS = 4096

Batches = Iterator[list[tuple[int, int]]]


def _batches(session: Session, source: Select, sae_id: str | None) -> Batches:
    """(label id, feature id) rows of `source` (ordered newest first), in growing batches
    until it runs out. Each batch is limited before it meets `features` for the SAE check:
    joining every match first cost 100 ms for a common word on PostgreSQL."""
    batch, below = FIRST_BATCH, None
    while True:
        page = source if below is None else source.where(source.selected_columns[0] < below)
        page = page.limit(batch).subquery()
        label_id, feature_id = page.c
        query = select(label_id, feature_id)
        if sae_id is not None:
            query = query.add_columns(Feature.sae_id == sae_id).join(
                Feature, Feature.id == feature_id
            )
        rows = run(session, query.order_by(label_id.desc())).all()
        yield [(lid, fid) for lid, fid, *in_sae in rows if not in_sae or in_sae[0]]
        if len(rows) < batch:
            return
        below, batch = rows[-1][0], min(batch * 4, MAX_BATCH)


def _matches_newest_first(session: Session, q: str, sae_id: str | None) -> Batches:
    match, label_id, matches = _match_condition(session, q)
    if session.get_bind().dialect.name == "sqlite":
        # FTS5 walks its matches in rowid order.
        yield from _batches(session, matches.where(match).order_by(label_id.desc()), sae_id)
        return
    # PostgreSQL: which plan is cheap depends on how common the words are, and the planner
    # misjudges phrases (it prices `a <-> b` as `a & b`, then walks the whole primary key
    # backwards for a phrase on 70 of 100,000 labels: 50 ms). So the newest RECENT_LABELS
    # ids are walked in id order (a common word fills a page there), and older matches
    # come from the GIN index (`id + 0` orders without the primary key).
    floor = run(session, select(func.max(Label.id) - RECENT_LABELS)).scalar()
    if floor is None:
        return
    recent = matches.where(match, label_id > floor).order_by(label_id.desc())
    yield from _batches(session, recent, sae_id)
    if floor > 0:
        older = matches.where(match, label_id <= floor).order_by((label_id + 0).desc())
        yield from _batches(session, older, sae_id)


def _newest_per_feature(
    batches: Batches, limit: int, after: int | None, max_scan: int
) -> tuple[list[int], bool]:
    """Ids of the newest matching label of each of the first `limit` + 1 features, in
    newest-first order, reading the newest-first batches only until there are enough: a
    common word costs a few batches, not all its matches. True with them if the read
    stopped at `max_scan` matches instead.

    After a cursor, a feature counts only if its newest match is below it (features whose
    newest match is at or above it were on an earlier page), so matches above the cursor
    are still read, to learn which features those were."""
    seen: set[int] = set()
    picked: list[int] = []
    scanned = 0
    for rows in batches:
        for lid, fid in rows:
            scanned += 1
            if scanned > max_scan:
                return picked, True
            if fid in seen:
                continue
            seen.add(fid)
            if after is None or lid < after:
                picked.append(lid)
                if len(picked) > limit:
                    return picked, False
    return picked, False


def search_labels(
    session: Session,
    q: str,
    *,
    sae_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    sort: str = "newest",
    score_type: str | None = None,
    min_score: float | None = None,
    max_scan: int = MAX_SCAN,
) -> Page[LabelMatch]:
    """Features with a label matching `q` (see search_syntax), newest match first; ranked
    or filtered by explanation score with `sort="score"`, `score_type`, `min_score`
    (score_search.py).

    Reads at most `max_scan` matches: past that, the page holds what was found (with a
    cursor to go on), or, if nothing was, a SpecError asks for a narrower query."""
    check_search(session, limit, sae_id)
    if sort not in ("newest", "score"):
        raise SpecError(f"is {sort!r}; use 'newest' or 'score'", field="sort")
    if sort == "score" or score_type is not None or min_score is not None:
        from saefeat.storage.catalog.score_search import search_labels_scored

        return search_labels_scored(
            session, q, sae_id=sae_id, sort=sort, score_type=score_type,  # type: ignore[arg-type]
            min_score=min_score, limit=limit, cursor=cursor, max_scan=max_scan,
        )  # fmt: skip
    after = None
    if cursor is not None:
        (after,) = decode_cursor(cursor, "labels:newest", (int,)).key
    batches = _matches_newest_first(session, q, sae_id)
    try:
        picked, truncated = _newest_per_feature(batches, limit, after, max_scan)
    except OperationalError as exc:
        # parse_query only lets well-formed queries through; this is the safety net for
        # anything FTS5 still refuses, so it is a 422 and never a 500.
        session.rollback()
        if "fts5" in str(exc.orig).lower():
            raise SpecError(f"the search engine refused it: {exc.orig}", field="q") from exc
        raise
    if truncated and not picked:
        raise SpecError(
            f"matches more than {max_scan} labels before this page; add words or an "
            "sae_id to narrow it",
            field="q",
        )
    query = (
        select(*FEATURE_VIEW_COLUMNS, *LABEL_ROW_COLUMNS)
        .select_from(Label)
        .join(Feature, Feature.id == Label.feature_id)
        .where(Label.id.in_(picked))
        .order_by(Label.id.desc())
    )
    split = len(FEATURE_VIEW_COLUMNS)
    rows = [
        LabelMatch(FeatureView(*row[:split]), LabelView(*row[split:]))
        for row in run(session, query)
    ]
    more = truncated or len(rows) > limit
    rows = rows[:limit]
    token = encode_cursor(Cursor("labels:newest", (rows[-1].label.id,))) if more else None
    return Page(rows, token)
