"""Server-rendered pages: a search page and a feature page (Jinja2 templates).

Pages read through the same query functions as the JSON API; the feature page's label
form posts to the JSON API with the key typed into the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from saefeat.api import convert, page_views
from saefeat.api.deps import get_session
from saefeat.errors import SaefeatError
from saefeat.storage.catalog import label_search, labels, queries

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)
SessionDep = Annotated[Session, Depends(get_session)]


def _render(request: Request, name: str, status: int = 200, **values) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(
        request, name, page_views.page_context(**values), status_code=status
    )


@router.get("/", response_class=HTMLResponse)
def search_page(
    request: Request,
    session: SessionDep,
    q: Annotated[str, Query(max_length=200)] = "",
    token: Annotated[str, Query(max_length=200)] = "",
    sae_id: str = "",
    labelled: str = "",
    cursor: str | None = None,
) -> HTMLResponse:
    """Label search (q), token search (token), or an SAE's feature list."""
    saes = queries.list_saes(session, limit=500).items
    values = {"saes": saes, "q": q, "token": token, "sae_id": sae_id, "labelled": labelled}
    try:
        if q:
            page = label_search.search_labels(
                session, q, sae_id=sae_id or None, limit=50, cursor=cursor
            )
            rows = [(m.feature, m.label.text) for m in page.items]
        elif token:
            page = queries.search_by_token(
                session, token, sae_id=sae_id or None, limit=50, cursor=cursor
            )
            current = labels.current_labels(session, [m.feature.id for m in page.items])
            rows = [(m.feature, _text(current.get(m.feature.id))) for m in page.items]
        elif sae_id:
            flag = {"yes": True, "no": False}.get(labelled)
            page = queries.list_features(session, sae_id, labelled=flag, limit=50, cursor=cursor)
            current = labels.current_labels(session, [f.id for f in page.items])
            rows = [(f, _text(current.get(f.id))) for f in page.items]
        else:
            return _render(request, "search.html", rows=None, next_cursor=None, **values)
    except SaefeatError as exc:
        return _render(
            request, "search.html", exc.status_code, rows=None, next_cursor=None,
            error=str(exc), **values,
        )  # fmt: skip
    return _render(request, "search.html", rows=rows, next_cursor=page.next_cursor, **values)


def _text(label) -> str | None:
    return label.text if label else None


@router.get("/saes/{sae_id}/features/{index}", response_class=HTMLResponse)
def feature_page(request: Request, sae_id: str, index: int, session: SessionDep) -> HTMLResponse:
    try:
        feature = queries.get_feature(session, sae_id, index)
    except SaefeatError as exc:
        return _render(request, "missing.html", exc.status_code, error=str(exc))
    detail, history, votes = convert.load_feature_detail(session, feature)
    near = queries.feature_neighbours(session, feature.id)
    near_labels = labels.current_labels(session, [n.feature.id for n in near])
    examples = [page_views.example_view(e, detail.max_activation) for e in detail.examples]
    return _render(
        request,
        "feature.html",
        sae=queries.get_sae(session, sae_id),
        feature=detail,
        top_examples=[e for e in examples if e.kind == "top"],
        quantile_examples=[e for e in examples if e.kind == "quantile"],
        bars=page_views.histogram_bars(detail.histogram),
        hist_range=page_views.histogram_range(detail.histogram),
        neighbours=[(n, _text(near_labels.get(n.feature.id))) for n in near],
        history=[convert.label_out(lb, votes.get(lb.id)) for lb in history],
    )
