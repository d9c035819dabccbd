"""What the routes share: parameter types (one description and one bound per parameter)
and the declaration of a catalog read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.orm import Session

from saefeat.api.deps import get_session, read_session
from saefeat.api.errors import problem_responses
from saefeat.api.schemas import MAX_ROW_ID
from saefeat.storage.catalog import queries

ReadSession = Annotated[Session, Depends(read_session)]
# A sync route's session: writes, and reads that are not on the catalog's async path.
SessionDep = Annotated[Session, Depends(get_session)]
SaeId = Annotated[str, Path(description="SAE id, as listed by GET /v1/saes")]
FeatureIndexParam = Annotated[
    int, Path(ge=0, le=MAX_ROW_ID, description="Latent index, 0..d_sae-1")
]
OnlySae = Annotated[str | None, Query(description="Only this SAE's features")]
# The SAE page's page of features: its offset (page x 100) stays a small SQL integer.
PageNumber = Annotated[int, Query(ge=0, le=100_000, description="Page of the SAE's features")]
Limit = Annotated[int, Query(ge=1, le=queries.MAX_PAGE, description="Page size")]
CursorParam = Annotated[
    str | None, Query(description="next_cursor of the previous page; omit for the first page")
]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def read_route(
    router: APIRouter, path: str, summary: str, problems: tuple[int, ...] = (404, 422), **options
) -> Callable[[Endpoint], Endpoint]:
    """Declare a read: GET `path`, answering the endpoint's return annotation (unless
    `options` name a response_model), with these problem statuses (default: no such SAE
    or feature, bad input). The endpoint's docstring, folded to one paragraph, is the
    operation's description."""

    def declare(endpoint: Endpoint) -> Endpoint:
        description = " ".join((endpoint.__doc__ or "").split()) or None
        return router.get(path, responses=problem_responses(*problems), summary=summary,
                          description=description, **options)(endpoint)  # fmt: skip

    return declare
