"""Writing labels: needs a key with the "label" scope.

Provenance comes from the key, never from the body: the author is the key's name, and
only a key with the "explain" scope (the explainer's) may write auto labels or scores."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from saefeat.api import convert
from saefeat.api.auth import require_scope
from saefeat.api.errors import ProblemError, problem_responses
from saefeat.api.params import FeatureIndexParam, SaeId, SessionDep
from saefeat.api.rate_limit import check_rate
from saefeat.api.schemas import MAX_ROW_ID, LabelCreate, LabelOut, VoteCreate
from saefeat.storage.catalog import labels, queries
from saefeat.storage.catalog.keys import has_scope
from saefeat.storage.catalog.models import ApiKey, Label

router = APIRouter(tags=["labels"])
LabelId = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="Label id, as in a label history")]


def label_writer(
    request: Request, key: Annotated[ApiKey, Depends(require_scope("label"))]
) -> ApiKey:
    """The writing key, once its label-write bucket has a token (else 429)."""
    check_rate(request.app.state.label_rate_limiter, f"key:{key.id}", "label writes")
    return key


Writer = Annotated[ApiKey, Depends(label_writer)]


def write_route(path: str, summary: str, description: str, **options):
    """A label write: POST, answers the label (LabelOut), behind the key and its rate limit."""
    problems = problem_responses(401, 403, 404, 422, 429)
    return router.post(path, responses=problems, summary=summary, description=description,
                       **options)  # fmt: skip


@write_route(
    "/saes/{sae_id}/features/{index}/labels",
    "Add a label to a feature (history is kept; nothing is overwritten)",
    'The author is the API key\'s name. `source: "auto"` and `score` need a key with the '
    '"explain" scope (403 otherwise).',
    status_code=201,
)
def create_label(
    sae_id: SaeId, index: FeatureIndexParam, body: LabelCreate, key: Writer, session: SessionDep
) -> LabelOut:
    if (body.source == "auto" or body.score is not None) and not has_scope(key, "explain"):
        raise ProblemError(
            403,
            f'the API key "{key.prefix}..." ({key.name}) has scopes {key.scopes}; auto '
            'labels and scores need the "explain" scope (the explainer\'s key)',
            slug="forbidden",
        )
    feature = queries.get_feature(session, sae_id, index)
    label = labels.add_label(
        session, feature, text=body.text, source=body.source, author=key.name, score=body.score
    )
    session.commit()
    return convert.label_out(label)  # type: ignore[return-value]


@write_route(
    "/labels/{label_id}/votes",
    "Vote a label up or down (one vote per key; voting again replaces it)",
    "A human label more people voted down than up stops being the feature's current label; "
    "the next newest accepted human label, else the best-scored auto label, is.",
)
def vote_label(label_id: LabelId, body: VoteCreate, key: Writer, session: SessionDep) -> LabelOut:
    totals = labels.vote_label(
        session, label_id, voter=f"{key.name} (key {key.id})", value=1 if body.vote == "up" else -1
    )
    session.commit()
    return convert.label_out(session.get(Label, label_id), totals)  # type: ignore[return-value]
