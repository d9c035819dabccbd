"""Parameter types the routes share: one description and one bound per parameter."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query
from sqlalchemy.orm import Session

from saefeat.api.deps import read_session
from saefeat.api.schemas import MAX_ROW_ID
from saefeat.storage.catalog import queries

ReadSession = Annotated[Session, Depends(read_session)]
SaeId = Annotated[str, Path(description="SAE id, as listed by GET /v1/saes")]
FeatureIndexParam = Annotated[
    int, Path(ge=0, le=MAX_ROW_ID, description="Latent index, 0..d_sae-1")
]
OnlySae = Annotated[str | None, Query(description="Only this SAE's features")]
Limit = Annotated[int, Query(ge=1, le=queries.MAX_PAGE, description="Page size")]
CursorParam = Annotated[
    str | None, Query(description="next_cursor of the previous page; omit for the first page")
]
