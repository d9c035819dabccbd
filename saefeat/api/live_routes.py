"""Live search: which features fire on a text the caller sends.

The route is `async`: it waits for the forward on the live pool without holding one of
the threads the other routes are served on. Each caller (its key, else its address) has
a token bucket; a full pool or an empty bucket answer at once, with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, NamedTuple, TypeVar

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session

from saefeat.api import rate_limit
from saefeat.api.auth import bearer, checked_key
from saefeat.api.errors import ProblemError, problem_responses
from saefeat.api.params import ReadSession, SaeId
from saefeat.api.schemas import ActiveFeature, TextActivations, TextQuery, TokenActivations
from saefeat.errors import SpecError
from saefeat.features import live
from saefeat.features.crosscoder import refuse_crosscoder
from saefeat.storage.catalog import labels, queries
from saefeat.storage.catalog.models import SAE
from saefeat.storage.catalog.set_registry import sae_model

router = APIRouter(tags=["catalog"])
T = TypeVar("T")
BUSY_RETRY_S = 1  # what a full pool tells callers to wait: one forward takes about that


def live_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> str:
    """Who is asking, for the rate limit: the key if one is sent (it must be valid), else
    the client's address. With `live_requires_key`, a key with the "read" scope."""
    required = request.app.state.settings.live_requires_key
    if credentials is None and not required:
        return f"address:{request.client.host if request.client else 'unknown'}"
    # Its own short session: nothing stays checked out while the text waits for the pool.
    with request.app.state.sessionmaker() as session:
        key = checked_key(credentials, session, "read" if required else None)
    return f"key:{key.id}"


LiveCaller = Annotated[str, Depends(live_caller)]
# What a route that runs the model can answer besides 200: the key, the SAE, the body's
# size and fields, the caller's rate limit, a full pool.
LIVE_PROBLEMS = problem_responses(401, 403, 404, 413, 422, 429, 503)


def check_rate(request: Request, caller: str) -> None:
    """429 with Retry-After once the caller's live token bucket is empty."""
    rate_limit.check_rate(request.app.state.live_rate_limiter, caller, "live requests")


async def run_on_live_pool(request: Request, fn: Callable[..., T], *args: object) -> T:
    """Run a model forward on the live pool (503 with Retry-After when it is full),
    without holding one of the threads the other routes are served on."""
    try:
        future = request.app.state.live_pool.submit(fn, *args)
    except live.LiveBusyError as exc:
        raise ProblemError(
            503, str(exc), slug="busy", headers={"Retry-After": str(BUSY_RETRY_S)}
        ) from exc
    return await asyncio.wrap_future(future)


class RunnableSae(NamedTuple):
    """What the model runs an SAE with: the model (name, revision), the checkpoint, the
    hook the SAE reads and, for a transcoder, the hook its decoder writes (else None)."""

    model_name: str
    revision: str | None
    checkpoint: str
    hook: str
    hook_out: str | None


def refuse_crosscoders(sae: SAE, what: str) -> None:
    """A crosscoder (cfg `sources`) is a 422 naming `sae_id`: `what` runs one model at
    one hook, and a crosscoder reads several models or layers at once."""
    refuse_crosscoder((sae.cfg or {}).get("sources"), what, "sae_id")


def runnable_sae(session: Session, sae: SAE, doing: str) -> RunnableSae:
    """The SAE as the model runs it; the session is closed then: the forward takes a
    while, and no connection is held through it."""
    if not sae.checkpoint_path:
        raise SpecError(f"has no checkpoint on this server, so it cannot {doing}", field="sae_id")
    model_name, revision = sae_model(session, sae)
    found = RunnableSae(model_name, revision, sae.checkpoint_path, sae.hook_name,
                        sae.hook_out_name)  # fmt: skip
    session.close()
    return found


@router.post(
    "/saes/{sae_id}/activations",
    responses=LIVE_PROBLEMS,
    summary="Run a text through the model and the SAE: each token's strongest features",
    description=(
        f"At most {live.MAX_TEXT_CHARS} characters and {live.MAX_TEXT_TOKENS} tokens (413 "
        "beyond). The first request loads the language model (seconds); it stays cached. "
        "Each caller (API key, else address) has a rate limit (429 with Retry-After), and "
        "a few texts run at once (503 with Retry-After when all are taken). A key sent "
        "must be valid; the server may require one with the read scope. A crosscoder "
        "(several models or layers at once) cannot run on one model's text: 422 naming "
        "`sae_id`."
    ),
)
async def text_activations(
    sae_id: SaeId,
    body: TextQuery,
    request: Request,
    caller: LiveCaller,
    session: ReadSession,
) -> TextActivations:
    check_rate(request, caller)
    sae = queries.get_sae(session, sae_id)
    refuse_crosscoders(sae, "live encoding")
    live.check_text(body.text)  # 413 before anything is loaded
    # Encoding reads the hook the SAE reads (a transcoder's input hook).
    model_name, revision, checkpoint, hook, _ = runnable_sae(session, sae, "be run on text")
    args = (model_name, revision, checkpoint, hook, body.text, body.top_n)
    tokens = await run_on_live_pool(request, live.features_for_sae, *args)
    texts, flags = _labels_and_flags(request, sae_id, {f for t in tokens for f, _ in t.features})
    return TextActivations(
        sae_id=sae_id,
        hook=hook,
        tokens=[
            TokenActivations(
                position=t.position,
                token_id=t.token_id,
                token=t.token,
                features=[
                    ActiveFeature(index=f, activation=v, label=texts.get(f), artifact=flags.get(f))
                    for f, v in t.features
                ],
                excluded=t.excluded,
            )  # fmt: skip
            for t in tokens
        ],
    )


def _labels_and_flags(
    request: Request, sae_id: str, indices: set[int]
) -> tuple[dict[int, str], dict[int, str]]:
    """The current label text and the artifact reason of each feature that has one (a
    short session of its own: the request's was closed before the forward)."""
    if not indices:
        return {}, {}
    with request.app.state.sessionmaker() as session:
        return (labels.current_label_texts(session, sae_id, indices),
                queries.artifact_reasons(session, sae_id, indices))  # fmt: skip
