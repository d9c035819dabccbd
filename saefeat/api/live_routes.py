"""Live search: which features fire on a text the caller sends."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from saefeat.api.deps import get_session
from saefeat.api.errors import problem_responses
from saefeat.api.schemas import ActiveFeature, TextActivations, TextQuery, TokenActivations
from saefeat.errors import SpecError
from saefeat.features import live
from saefeat.storage.catalog import queries

router = APIRouter(tags=["catalog"])


@router.post(
    "/saes/{sae_id}/activations",
    response_model=TextActivations,
    responses=problem_responses(404, 413, 422),
    summary="Run a text through the model and the SAE: each token's strongest features",
    description=(
        f"At most {live.MAX_TEXT_CHARS} characters and {live.MAX_TEXT_TOKENS} tokens (413 "
        "beyond). The first request loads the language model (seconds); it stays cached."
    ),
)
def text_activations(
    sae_id: Annotated[str, Path(description="SAE id")],
    body: TextQuery,
    session: Annotated[Session, Depends(get_session)],
) -> TextActivations:
    sae = queries.get_sae(session, sae_id)
    live.check_text(body.text)  # 413 before anything is loaded
    if not sae.checkpoint_path:
        raise SpecError(
            "has no checkpoint on this server, so it cannot be run on text", field="sae_id"
        )
    model_name, checkpoint, hook = sae.model_name, sae.checkpoint_path, sae.hook_name
    session.close()  # the forward can take a while: do not hold a connection through it
    tokens = live.features_for_sae(model_name, checkpoint, hook, body.text, body.top_n)
    return TextActivations(
        sae_id=sae_id,
        hook=hook,
        tokens=[
            TokenActivations(
                position=t.position,
                token_id=t.token_id,
                token=t.token,
                features=[ActiveFeature(index=f, activation=v) for f, v in t.features],
                excluded=t.excluded,
            )
            for t in tokens
        ],
    )
