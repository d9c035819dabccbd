"""Full-text search over labels (read routes)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from saefeat.api import convert
from saefeat.api.params import CursorParam, Limit, OnlySae, ReadSession, read_route
from saefeat.api.schemas import LabelMatchPage
from saefeat.storage.catalog import label_search, labels
from saefeat.storage.catalog.search_syntax import MAX_QUERY_CHARS

router = APIRouter(tags=["catalog"])


@read_route(router, "/labels/search", "Features whose labels match a full-text query")
async def search_labels(
    session: ReadSession,
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS, description="The query")],
    sae_id: OnlySae = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
    sort: Annotated[
        Literal["newest", "score"],
        Query(description="newest match first, or best score first (ties: newest)"),
    ] = "newest",
    score_type: Annotated[
        Literal["detection", "fuzzing", "embedding", "activation"] | None,
        Query(description="Rank/filter by this explanation score; omit for the label's score"),
    ] = None,
    min_score: Annotated[
        float | None, Query(description="Only labels with a score at least this")
    ] = None,
) -> LabelMatchPage:
    """Web-search syntax: words (all must match, stemmed: `bracket` finds `brackets`), `"exact
    phrase"`, `OR` between alternatives, `-word` to exclude, `word*` for a prefix. A
    malformed query (an unclosed quote, a dangling OR, only exclusions) is a 422 naming the
    problem. Each feature appears once, with its newest matching label; newest first."""

    def search() -> LabelMatchPage:
        page = label_search.search_labels(
            session, q, sae_id=sae_id, limit=limit, cursor=cursor,
            sort=sort, score_type=score_type, min_score=min_score,
        )  # fmt: skip
        votes = labels.label_votes(session, [m.label.id for m in page.items])
        items = [convert.label_match(m, votes.get(m.label.id)) for m in page.items]
        return LabelMatchPage(items=items, next_cursor=page.next_cursor)

    # Inline, as every catalog read (api/deps.py): a search reads at most
    # label_search.MAX_SCAN matches (about a millisecond typically, tens at worst). On the
    # thread pool its 16-client p95 was 3-4x worse (GIL hand-offs; bench/RESULTS.md).
    return search()
