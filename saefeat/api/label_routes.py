"""Writing labels: needs a key with the "label" scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from saefeat.api import convert
from saefeat.api.auth import require_scope
from saefeat.api.deps import get_session
from saefeat.api.errors import problem_responses
from saefeat.api.schemas import LabelCreate, LabelOut
from saefeat.storage.catalog import labels, queries
from saefeat.storage.catalog.models import ApiKey

router = APIRouter(tags=["labels"])


@router.post(
    "/saes/{sae_id}/features/{index}/labels",
    status_code=201,
    response_model=LabelOut,
    responses=problem_responses(401, 403, 404, 422),
    summary="Add a label to a feature (history is kept; nothing is overwritten)",
)
def create_label(
    sae_id: Annotated[str, Path(description="SAE id")],
    index: Annotated[int, Path(ge=0, description="Latent index")],
    body: LabelCreate,
    key: Annotated[ApiKey, Depends(require_scope("label"))],
    session: Annotated[Session, Depends(get_session)],
) -> LabelOut:
    feature = queries.get_feature(session, sae_id, index)
    label = labels.add_label(
        session,
        feature,
        text=body.text,
        source=body.source,
        author=body.author if body.author is not None else key.name,
        score=body.score,
    )
    session.commit()
    return convert.label_out(label)  # type: ignore[return-value]
