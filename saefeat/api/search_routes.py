"""Full-text search over labels, and phrase search over top-example text (read routes)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from saefeat.api import convert
from saefeat.api.params import CursorParam, Limit, OnlySae, ReadSession, read_route
from saefeat.api.schemas import LabelMatchPage, PhraseMatchOut, PhraseMatchPage
from saefeat.storage.catalog import example_search, label_search, labels
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
        Literal["detection", "fuzzing", "embedding", "activation", "keyword"] | None,
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


@read_route(router, "/features/search/phrase",
            "Features whose top examples contain a phrase where they fire")  # fmt: skip
async def search_phrase(
    session: ReadSession,
    phrase: Annotated[
        str,
        Query(
            min_length=1,
            max_length=example_search.MAX_PHRASE_CHARS,
            description="Text to find in the windows of top examples (case-insensitive)",
        ),
    ],
    sae_id: OnlySae = None,
    anywhere: Annotated[
        bool, Query(description="Match anywhere in the window, not only over its focus token")
    ] = False,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> PhraseMatchPage:
    """Needs no explanation: the phrase is looked for in the text of each feature's top
    examples, and by default must cover the token the example is about (where the feature
    fires). Each feature appears once, with its strongest such example, in feature order.
    A request reads at most a bounded number of examples (docs/SECURITY.md); past that the
    page holds what was found and `next_cursor` reads on."""

    def search() -> PhraseMatchPage:
        page = example_search.search_phrase(
            session, phrase, sae_id=sae_id, anywhere=anywhere, limit=limit, cursor=cursor
        )
        current = labels.current_labels(session, [m.feature.id for m in page.items])
        items = [
            PhraseMatchOut(
                **convert.columns(m.feature, "sae_id", "index", "density", "max_activation",
                                  "artifact"),
                rank=m.rank, activation=m.activation, tokens=m.token_strs, focus=m.focus,
                label=label.text if (label := current.get(m.feature.id)) else None,
            )
            for m in page.items
        ]  # fmt: skip
        return PhraseMatchPage(items=items, next_cursor=page.next_cursor)

    # Off the event loop: a rare phrase reads up to example_search.MAX_SCAN examples.
    return await run_in_threadpool(search)
