"""Read routes over the catalog: SAEs, features, token search, label history, neighbours.

Each is declared with params.read_route; its docstring is its OpenAPI description."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from saefeat.api import convert
from saefeat.api.params import (
    CursorParam,
    FeatureIndexParam,
    Limit,
    OnlySae,
    ReadSession,
    SaeId,
    read_route,
)
from saefeat.api.schemas import (
    FeatureDetail,
    FeaturePage,
    LabelHistory,
    NeighbourList,
    SaeDetail,
    SaePage,
    TokenMatchPage,
)
from saefeat.errors import NotFoundError
from saefeat.storage.catalog import (
    documents,
    explanations,
    feature_reads,
    labels,
    queries,
    token_search,
)

router = APIRouter(tags=["catalog"])
route = partial(read_route, router)  # a catalog read: GET, 404 and 422 by default

_ARTIFACTS_HELP = ("Artifact features (fixed positions, after special tokens): left out, kept, "
                   "or the only ones listed")  # fmt: skip
_SEARCH_BY_HELP = ("fires: tokens the feature fires on (share of its top examples' activation "
                   "mass); promotes: its vocabulary projection; effect: its measured effect on "
                   "the next token")  # fmt: skip
Artifacts = Annotated[Literal["exclude", "include", "only"], Query(description=_ARTIFACTS_HELP)]
_SHARING_HELP = ("A two-source crosscoder's features of one class by relative norm: a_only "
                 "(< 0.1), shared, b_only (> 0.9); omit for all")  # fmt: skip
Sharing = Annotated[Literal["a_only", "shared", "b_only"] | None, Query(description=_SHARING_HELP)]
SearchBy = Annotated[Literal["fires", "promotes", "effect"], Query(description=_SEARCH_BY_HELP)]


@route("/saes", "List the SAEs in the catalog", (422,))
async def list_saes(
    session: ReadSession, limit: Limit = 100, cursor: CursorParam = None
) -> SaePage:
    page = queries.list_saes(session, limit=limit, cursor=cursor)
    return SaePage(items=[convert.sae_summary(s) for s in page.items], next_cursor=page.next_cursor)


@route("/saes/{sae_id}", "One SAE, with its config and how many features are indexed")
async def get_sae(sae_id: SaeId, session: ReadSession) -> SaeDetail:
    sae = queries.get_sae(session, sae_id)
    return convert.sae_detail(sae, queries.count_features(session, sae_id))


@route("/saes/{sae_id}/evals/core", "The SAE's SAEBench `core` evaluation record (held-out tokens)")
async def get_core_eval(sae_id: SaeId, session: ReadSession) -> dict[str, Any]:
    record = queries.get_sae(session, sae_id).core_eval
    if record is None:
        raise NotFoundError(
            f"SAE {sae_id!r} has no core evaluation (it was registered without training "
            "here, or before evaluations were recorded); retrain it to get one",
            field="sae_id",
        )
    return record


@route("/saes/{sae_id}/features", "List an SAE's features, filtered by density and sorted")
async def list_features(
    sae_id: SaeId,
    session: ReadSession,
    sort: Annotated[
        Literal["max_activation", "density", "relative_norm"],
        Query(
            description="Sort key; ties by index. relative_norm: a two-source crosscoder's "
            "(422 for another SAE)"
        ),
    ] = "max_activation",
    order: Annotated[Literal["asc", "desc"], Query(description="Sort direction")] = "desc",
    min_density: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    max_density: Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    labelled: Annotated[
        bool | None,
        Query(description="true: only features with a label; false: only unlabelled ones"),
    ] = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
    artifacts: Artifacts = "exclude",
    sharing: Sharing = None,
) -> FeaturePage:
    """A crosscoder of two sources (`kind` crosscoder on the SAE) also sorts by its
    features' relative norm and keeps one class of them (`sharing`); for any other SAE
    both are a 422 naming the parameter."""

    def read() -> FeaturePage:
        page = queries.list_features(
            session, sae_id, sort=sort, order=order, min_density=min_density,
            max_density=max_density, labelled=labelled, limit=limit, cursor=cursor,
            artifacts=artifacts, sharing=sharing,
        )  # fmt: skip
        current = labels.current_labels(session, [f.id for f in page.items])
        items = [convert.feature_summary(f, current.get(f.id)) for f in page.items]
        return FeaturePage(items=items, next_cursor=page.next_cursor)

    # A filter that few features pass (labelled, a narrow density window) walks the
    # index until a page is full: possibly the whole SAE, so not on the event loop.
    return await run_in_threadpool(read)


@route(
    "/saes/{sae_id}/features/{index}",
    "One feature: statistics, examples, vocabulary projection, current label",
    response_model=FeatureDetail,
)
async def get_feature(sae_id: SaeId, index: FeatureIndexParam, session: ReadSession) -> Response:
    feature = queries.get_feature(session, sae_id, index)
    label = convert.current_label_out(labels.label_state(session, [feature.id]), feature.id)
    document = documents.feature_document(session, feature.id)
    explained = explanations.feature_explanations(session, feature.id)
    effects = feature_reads.feature_effects(session, feature.id)
    # Already JSON (the arrays come from the database as text), so no response_model pass.
    body = convert.feature_detail_json(feature, document, label, explained, effects)
    return Response(body, media_type="application/json")


@route("/saes/{sae_id}/features/{index}/labels", "A feature's label history, newest first")
async def list_labels(
    sae_id: SaeId,
    index: FeatureIndexParam,
    session: ReadSession,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> LabelHistory:
    feature = queries.get_feature(session, sae_id, index)
    page, next_cursor = labels.label_history_page(session, feature.id, limit=limit, cursor=cursor)
    state = labels.label_state(session, [feature.id])  # the current label needs them all
    return LabelHistory(
        items=[convert.label_out(lb, state.votes.get(lb.id)) for lb in page],  # type: ignore[misc]
        current=convert.current_label_out(state, feature.id),
        next_cursor=next_cursor,
    )


@route(
    "/saes/{sae_id}/features/{index}/neighbours",
    "The features whose decoder rows are most similar (cosine), nearest first",
)
async def list_neighbours(
    sae_id: SaeId, index: FeatureIndexParam, session: ReadSession
) -> NeighbourList:
    feature = queries.get_feature(session, sae_id, index)
    near = feature_reads.feature_neighbours(session, feature.id)
    current = labels.current_labels(session, [n.feature.id for n in near])
    return NeighbourList(items=[convert.neighbour(n, current.get(n.feature.id)) for n in near])


@route("/features/search", "Features by a token: one they fire on, promote, or make likelier")
async def search_features(
    session: ReadSession,
    token: Annotated[str, Query(min_length=1, max_length=200, description="Token string")],
    sae_id: OnlySae = None,
    side: Annotated[
        Literal["top", "bottom"], Query(description="by=promotes: which projection list")
    ] = "top",
    exact: Annotated[bool, Query(description="Match only the string as given")] = False,
    limit: Limit = 50,
    cursor: CursorParam = None,
    by: SearchBy = "promotes",
) -> TokenMatchPage:
    """Matches the token string exactly, and also its other leading-space spellings: one
    leading " ", "Ġ" (byte-level BPE) or "▁" (SentencePiece) is stripped from the query,
    then the bare word and the word after each of the three markers all match. So "cat",
    " cat", "Ġcat" and "▁cat" find the same features. `exact=true` turns this off. Results
    are strongest first: for `by=promotes` the largest value for `side=top`, most negative
    for `side=bottom`; for `by=fires` the largest share (`value`, 0-1; `token_id` -1); for
    `by=effect` the largest measured rise. A feature holding several spellings appears
    once, with its strongest."""

    def read() -> TokenMatchPage:
        page = token_search.search_tokens(session, token, by=by, sae_id=sae_id, side=side,
                                          exact=exact, limit=limit, cursor=cursor)  # fmt: skip
        current = labels.current_labels(session, [m.feature.id for m in page.items])
        items = [convert.token_match(m, current.get(m.feature.id)) for m in page.items]
        return TokenMatchPage(items=items, next_cursor=page.next_cursor)

    # Inline, as every catalog read (api/deps.py): a common token's entries are read in
    # growing batches until a page is full, a few milliseconds. On the thread pool its
    # 16-client p95 was 3x worse (GIL hand-offs; bench/RESULTS.md, catalog).
    return read()
