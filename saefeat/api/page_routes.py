"""Pages: a search page (with a "which features fire on my text" box), a feature page,
an SAE page and a jobs page (Jinja2 templates; charts as server-side SVG, api/charts.py).

The feature page's examples, histogram and projection are drawn in the browser by
static/feature.js from JSON embedded in the page; the rest is rendered here.

Pages read through the same query functions as the JSON API; the feature page's label
form posts to the JSON API with the key typed into the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool

from saefeat.api import charts, convert
from saefeat.api.params import FeatureIndexParam, PageNumber, ReadSession, SaeId
from saefeat.errors import SaefeatError
from saefeat.storage.catalog import (
    documents,
    example_search,
    explanations,
    feature_reads,
    label_search,
    labels,
    queries,
    token_search,
)
from saefeat.storage.catalog.queries import Page

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
STATIC_DIR = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)
# Open like /static (app.py includes it without the read guard): a browser asks for
# /favicon.ico with no key.
asset_router = APIRouter(include_in_schema=False)


def with_hook(name: str, hook: str | None, sep: str = " · ") -> str:
    """An SAE's name and its hook, the hook once: a trained SAE's default name begins
    with its hook (workers/train_job.py), an imported one's need not."""
    return name if not hook or hook in name else f"{name}{sep}{hook}"


def histogram_range(histogram: dict | None, max_activation: float | None) -> str | None:
    """The activation histogram's caption: the range of the bins drawn (those from the
    first to the last that hold tokens), its top end the feature's max activation, which
    lies in the last of them: that bin's upper edge is a shared log-spaced edge
    (features/accumulate.py), not a value the feature reached. No minimum is stored, so
    the low end is the first bin's lower edge ("up to" when that is the lowest bin, which
    also holds everything below it; the top bin likewise holds everything above it).
    None: no tokens to draw."""
    counts = (histogram or {}).get("counts") or []
    edges = (histogram or {}).get("edges") or []
    held = [i for i, c in enumerate(counts) if c > 0]
    if not held or len(edges) != len(counts) + 1:
        return None
    lo, hi = held[0], held[-1] + 1  # bins lo..hi-1 are drawn, edges[lo] to edges[hi]
    high = edges[hi]
    if max_activation is not None and max_activation > 0:
        # Bounded by the last bin drawn: closed below unless it is the lowest bin, and
        # above unless it is the top one.
        high = max(max_activation, edges[hi - 1]) if hi > 1 else max_activation
        if hi < len(counts):
            high = min(high, edges[hi])
    low = "up to" if lo == 0 else f"{edges[lo]:.3g} to"
    return f"activation {low} {high:.3g}"


def source_labels(sources: list[dict[str, Any]]) -> list[str]:
    """What a page calls each of a crosscoder's sources: model A, model B, ... for sets
    of several models, else (layers of one model) each one's hook."""
    from saefeat.features.crosscoder import source_kinds

    if source_kinds(sources) == "models":
        return [f"model {chr(ord('A') + i)}" if i < 26 else f"model {i + 1}"
                for i in range(len(sources))]  # fmt: skip
    return [str(s.get("hook")) for s in sources]


def page_query(values: dict[str, Any], defaults: dict[str, Any], **changes: Any) -> str:
    """A link to this page with some parameters changed: `?k=v&...` of the values that
    differ from their defaults (empty: "?")."""
    kept = {k: v for k, v in (values | changes).items() if v is not None and v != defaults.get(k)}
    return "?" + urlencode(kept)


TEMPLATES.env.globals["with_hook"] = with_hook
TEMPLATES.env.globals["source_labels"] = source_labels


@asset_router.get("/favicon.ico")
async def favicon() -> FileResponse:
    """The pages' icon (static/favicon.svg, also linked from base.html)."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


def _render(request: Request, name: str, status: int = 200, **values) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, values, status_code=status)


@router.get("/", response_class=HTMLResponse)
async def search_page(
    request: Request,
    session: ReadSession,
    q: Annotated[str, Query(max_length=200)] = "",
    token: Annotated[str, Query(max_length=200)] = "",
    sae_id: str = "",
    labelled: str = "",
    cursor: str | None = None,
    by: Literal["fires", "promotes", "effect"] = "fires",
    phrase: Annotated[str, Query(max_length=200)] = "",
    artifacts: Literal["exclude", "include", "only"] = "exclude",
) -> HTMLResponse:
    """Label search (q), token search (token, by what features fire on, promote or make
    likelier), phrase search over top examples (phrase), or an SAE's feature list."""
    saes = queries.list_saes(session, limit=500).items
    values = {"saes": saes, "q": q, "token": token, "sae_id": sae_id, "labelled": labelled,
              "by": by, "phrase": phrase, "artifacts": artifacts}  # fmt: skip
    if not (q or token or phrase or sae_id):
        return _render(request, "search.html", rows=None, next_cursor=None, **values)

    def search() -> tuple[list, Page]:
        if q:
            page = label_search.search_labels(
                session, q, sae_id=sae_id or None, limit=50, cursor=cursor
            )
            return [(m.feature, m.label.text, None) for m in page.items], page
        if token or phrase:
            if token:
                page = token_search.search_tokens(
                    session, token, by=by, sae_id=sae_id or None, limit=50, cursor=cursor
                )
            else:
                page = example_search.search_phrase(
                    session, phrase, sae_id=sae_id or None, limit=50, cursor=cursor
                )
            current = labels.current_labels(session, [m.feature.id for m in page.items])
            return [(m.feature, _text(current.get(m.feature.id)), _why(m, by))
                    for m in page.items], page  # fmt: skip
        flag = {"yes": True, "no": False}.get(labelled)
        page = queries.list_features(session, sae_id, labelled=flag, limit=50, cursor=cursor,
                                     artifacts=artifacts)  # fmt: skip
        current = labels.current_labels(session, [f.id for f in page.items])
        return [(f, _text(current.get(f.id)), None) for f in page.items], page

    try:
        # A label search reads up to label_search.MAX_SCAN matches: off the event loop,
        # as the JSON search route runs it.
        rows, page = await run_in_threadpool(search)
    except SaefeatError as exc:
        return _render(
            request, "search.html", exc.status_code, rows=None, next_cursor=None,
            error=str(exc), **values,
        )  # fmt: skip
    return _render(request, "search.html", rows=rows, next_cursor=page.next_cursor, **values)


def _text(label) -> str | None:
    return label.text if label else None


def _why(match, by: str) -> str:
    """What a token or phrase match rests on, in a few words (the search page's column)."""
    if isinstance(match, example_search.PhraseMatch):
        tokens, focus = match.token_strs, match.focus
        return (f"{''.join(tokens[:focus])}[{tokens[focus]}]{''.join(tokens[focus + 1 :])}"
                f"  (act {match.activation:.3g}, top example {match.rank + 1})")  # fmt: skip
    if by == "fires":
        return f"fires on {match.token_str!r}: {match.value:.0%} of its top activation"
    if by == "effect":
        return f"raises {match.token_str!r} by {match.value:.3g} nats (measured)"
    return f"promotes {match.token_str!r} (logit {match.value:.3g})"


@router.get("/saes/{sae_id}/features/{index}", response_class=HTMLResponse)
async def feature_page(
    request: Request, sae_id: SaeId, index: FeatureIndexParam, session: ReadSession
) -> HTMLResponse:
    try:
        feature = queries.get_feature(session, sae_id, index)
    except SaefeatError as exc:
        return _render(request, "missing.html", exc.status_code, error=str(exc))
    document = documents.feature_document(session, feature.id)
    state = labels.label_state_around(session, feature.id)
    neighbours = orjson.loads(document.neighbours)
    # A crosscoder's sources name its features' decoder norms (one per source).
    sources = queries.sae_sources(session, sae_id) if feature.decoder_norms is not None else []
    return _render(
        request,
        "feature.html",
        feature=feature,
        label=convert.current_label_out(state, feature.id),
        feature_data=Markup(
            convert.script_json(
                feature, document, feature_reads.feature_effects(session, feature.id)
            )
        ),  # fmt: skip
        histogram_range=histogram_range(feature.histogram, feature.max_activation),
        neighbours=[(n, _text(state.current(n["feature_id"]))) for n in neighbours],
        history=[convert.label_out(lb, state.votes.get(lb.id)) for lb in state.history(feature.id)],
        explanations=explanations.feature_explanations(session, feature.id),
        score_meanings=explanations.SCORE_MEANINGS,
        headline_score=explanations.headline_score,
        steer_max_tokens=request.app.state.settings.steer_max_new_tokens,
        steer_default_strength=STEER_DEFAULT_STRENGTH,
        sources=sources,
    )


SAE_PAGE_FEATURES = 100  # features listed per page of the SAE page
# analysis/steer.py's DEFAULT_STRENGTH, without importing torch into the pages (a test
# in tests/analysis/test_steer.py keeps them equal).
STEER_DEFAULT_STRENGTH = 6.0


@router.get("/saes/{sae_id}", response_class=HTMLResponse)
async def sae_page(
    request: Request,
    sae_id: SaeId,
    session: ReadSession,
    page: PageNumber = 0,
    artifacts: Literal["exclude", "include", "only"] = "exclude",
    sort: Literal["max_activation", "relative_norm"] = "max_activation",
    order: Literal["asc", "desc"] = "desc",
    sharing: Literal["a_only", "shared", "b_only", ""] = "",
) -> HTMLResponse:
    """An SAE: spec and lineage, held-out metrics, density histogram, its features each
    with a sparkline of its activation histogram (strongest first). A crosscoder's page
    lists its sources, and with two sources sorts its features by relative norm and
    keeps one class (`sharing`) when asked; another SAE's ignores both."""
    try:
        sae = queries.get_sae(session, sae_id)
    except SaefeatError as exc:
        return _render(request, "missing.html", exc.status_code, error=str(exc))
    lineage = queries.sae_lineage(session, sae, request.app.state.settings.activations_dir)
    sources = queries.sae_sources(session, sae_id)
    if len(sources) != 2:  # no relative norm to sort by or class to keep
        sort, order, sharing = "max_activation", "desc", ""
    rows = queries.strongest_features(
        session,
        sae_id,
        offset=page * SAE_PAGE_FEATURES,
        limit=SAE_PAGE_FEATURES + 1,
        artifacts=artifacts,
        sort=sort,
        order=order,
        sharing=sharing or None,
    )
    current = labels.current_labels(session, [f.id for f, _ in rows])
    features = [(f, _text(current.get(f.id)), charts.sparkline(histogram))
                for f, histogram in rows[:SAE_PAGE_FEATURES]]  # fmt: skip
    metrics = dict(sae.metrics or {})
    density = charts.density_chart(metrics.pop("density_histogram", None))
    shown = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    return _render(
        request, "sae.html", sae=sae, aset=lineage.activation_set, corpus=lineage.corpus,
        train_spec=(sae.cfg or {}).get("train_spec"), metrics=shown, density=density,
        features=features, page=page, more=len(rows) > SAE_PAGE_FEATURES,
        artifacts=artifacts, n_artifacts=queries.count_artifacts(session, sae_id),
        feature_map=_feature_map(session, sae_id) if page == 0 else None,
        sources=sources, sort=sort, order=order, sharing=sharing,
        query=lambda **changes: page_query(
            {"page": page, "artifacts": artifacts, "sort": sort, "order": order,
             "sharing": sharing}, SAE_PAGE_DEFAULTS, **changes),
    )  # fmt: skip


# The SAE page's parameters at their defaults (left out of its links).
SAE_PAGE_DEFAULTS = {"page": 0, "artifacts": "exclude", "sort": "max_activation",
                     "order": "desc", "sharing": ""}  # fmt: skip


def _feature_map(session, sae_id: str) -> dict | None:
    """The SAE page's map (api/map_chart.py): its SVG, legend and counts, or None."""
    from saefeat.api import map_chart
    from saefeat.storage.catalog.feature_map import feature_map

    fmap = feature_map(session, sae_id)
    svg = map_chart.map_svg(sae_id, fmap)
    if svg is None:
        return None
    return {"svg": svg, "legend": map_chart.legend(fmap), "style": Markup(map_chart.STYLE),
            "n_shown": len(fmap.points), "n_placed": fmap.n_placed}  # fmt: skip


@router.get("/jobs", response_class=HTMLResponse)
async def jobs_page(request: Request) -> HTMLResponse:
    """Every job with its kind, status and live progress (static/jobs.js reads GET
    /v1/jobs every few seconds). A page sends no key, so it shows what anonymous readers
    may see: no specs or errors (those need the `jobs` scope, over the API)."""
    return _render(request, "jobs.html")
