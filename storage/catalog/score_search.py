"""Label search ranked or filtered by explanation score (issue 13).

`score_type` None ranks by the label's own score (an auto label's headline score, the
mean of its scores: explanations.headline_score); a type (detection, fuzzing, embedding,
activation, keyword) ranks by that row of `explanation_scores`. Labels without that
score do not match. Each feature appears once, at its best-ranked matching label; pages
are keyset on (score, label id).
The database ranks every match of `q` above `min_score`; at most `max_scan` of them are
read per page.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from saefeat.errors import SpecError
from saefeat.storage.catalog.cursor import Cursor, decode_cursor, encode_cursor
from saefeat.storage.catalog.explanations import SCORE_TYPES
from saefeat.storage.catalog.labels import LABEL_ROW_COLUMNS, LabelView
from saefeat.storage.catalog.models import ExplanationScore, Feature, Label
from saefeat.storage.catalog.queries import FEATURE_VIEW_COLUMNS, FeatureView, Page, run

LabelSort = Literal["newest", "score"]


def search_labels_scored(
    session: Session,
    q: str,
    *,
    sae_id: str | None,
    sort: LabelSort,
    score_type: str | None,
    min_score: float | None,
    limit: int,
    cursor: str | None,
    max_scan: int,
):
    from saefeat.storage.catalog.label_search import LabelMatch, _match_condition

    if score_type is not None and score_type not in SCORE_TYPES:
        raise SpecError(f"is {score_type!r}; use one of {list(SCORE_TYPES)}", field="score_type")
    match, label_id, matches = _match_condition(session, q)
    if score_type is None:
        value = Label.score  # both dialects' match sources select from labels
    else:
        value = ExplanationScore.value
        matches = matches.join(
            ExplanationScore,
            and_(ExplanationScore.label_id == label_id, ExplanationScore.type == score_type),
        )
    query = matches.add_columns(value).where(match, value.is_not(None))
    if min_score is not None:
        query = query.where(value >= min_score)
    if sae_id is not None:
        query = query.join(Feature, Feature.id == Label.feature_id).where(Feature.sae_id == sae_id)
    by_score = sort == "score"
    order = (value.desc(), label_id.desc()) if by_score else (label_id.desc(),)
    ordering = f"labels:{sort}:{score_type or 'label'}"

    def key(lid: int, v: float) -> tuple:  # the results come in ascending order of this
        return (-v, -lid) if by_score else (-lid,)

    after = None
    if cursor is not None:
        decoded = decode_cursor(cursor, ordering, (float, int) if by_score else (int,)).key
        after = key(decoded[-1], decoded[0])

    seen: set[int] = set()
    picked = []
    # At most max_scan matches are read (the database still ranks every match, in a top-N
    # sort); past that the page holds what was found, with a cursor to go on.
    rows_read = run(session, query.order_by(*order).limit(max_scan)).all()
    for row in rows_read:
        lid, fid, v = row
        if fid in seen:
            continue
        seen.add(fid)
        if after is not None and key(lid, v) <= after:
            continue  # its best match was on an earlier page
        picked.append(row)
        if len(picked) > limit:
            break
    ids = [lid for lid, _, _ in picked[:limit]]
    rows = run(
        session,
        select(*FEATURE_VIEW_COLUMNS, *LABEL_ROW_COLUMNS)
        .join(Label, Label.feature_id == Feature.id)
        .where(Label.id.in_(ids)),
    ).all()
    split = len(FEATURE_VIEW_COLUMNS)
    by_id = {r[split]: LabelMatch(FeatureView(*r[:split]), LabelView(*r[split:])) for r in rows}
    items = [by_id[i] for i in ids]
    token = None
    if len(picked) > limit or (len(rows_read) == max_scan and picked):
        lid, _, v = picked[min(limit, len(picked)) - 1]
        token = encode_cursor(Cursor(ordering, (v, lid) if by_score else (lid,)))
    elif len(rows_read) == max_scan:
        raise SpecError(
            f"matches more than {max_scan} labels before this page; add words, an sae_id "
            "or a higher min_score to narrow it",
            field="q",
        )
    return Page(items, token)
