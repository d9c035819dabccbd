"""Steering: generate from a prompt with SAE features added or clamped at the SAE's hook,
beside the default continuation. Its request and response bodies live here, with it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from saefeat.analysis import steer
from saefeat.api.live_routes import (
    LIVE_PROBLEMS,
    LiveCaller,
    check_rate,
    run_on_live_pool,
    runnable_sae,
)
from saefeat.api.params import ReadSession, SaeId
from saefeat.storage.catalog import queries

router = APIRouter(tags=["analysis"])


class SteerFeature(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not a default

    index: int = Field(description="Feature index in 0..d_sae-1")
    strength: float = Field(
        allow_inf_nan=False,
        description="add: multiple of the decoder direction; clamp: the feature's value",
    )


class SteerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=4000, description="Text to continue")
    features: list[SteerFeature] = Field(
        description=f"1..{steer.MAX_FEATURES} features and their strengths"
    )
    method: Literal["add", "clamp"] = Field(
        default="add",
        description="add: x + strength * W_dec[f]; clamp: encode, set the feature to "
        "strength, decode, keep the SAE's error term",
    )
    temperature: float = Field(default=0.0, allow_inf_nan=False, description="0 = greedy")
    seed: int = Field(default=0, description="Both runs sample with this seed")
    max_new_tokens: int = Field(default=32, description="Bounded by the server's setting")
    n_promoted: int = Field(
        default=steer.N_PROMOTED, description="Top promoted tokens reported per feature"
    )


class PromotedOut(BaseModel):
    index: int
    token_ids: list[int]
    tokens: list[str]


class ContinuationOut(BaseModel):
    text: str
    token_ids: list[int]
    tokens: list[str]
    promoted_logprobs: list[list[list[float]]] = Field(
        description="[generated position][feature][promoted token] log-probability"
    )
    mean_promoted_logprob: list[float | None] = Field(
        description="Per feature: mean over positions and its promoted tokens"
    )


class SteerOut(BaseModel):
    sae_id: str
    hook: str
    method: str
    prompt_tokens: int
    promoted: list[PromotedOut]
    default: ContinuationOut
    steered: ContinuationOut


def _continuation(c: steer.Continuation) -> ContinuationOut:
    means = [None if m != m else m for m in c.mean_promoted_logprob()]  # nan -> null
    return ContinuationOut(text=c.text, token_ids=c.token_ids, tokens=c.tokens,
                           promoted_logprobs=c.promoted_logprobs,
                           mean_promoted_logprob=means)  # fmt: skip


def steer_request(body: SteerBody) -> steer.SteerRequest:
    return steer.SteerRequest(
        prompt=body.prompt,
        features=tuple(steer.FeatureStrength(f.index, f.strength) for f in body.features),
        method=body.method,
        temperature=body.temperature,
        seed=body.seed,
        max_new_tokens=body.max_new_tokens,
        n_promoted=body.n_promoted,
    )


@router.post(
    "/saes/{sae_id}/steer",
    responses=LIVE_PROBLEMS,
    summary="Generate with features added or clamped, beside the default continuation",
    description=(
        "Both runs use the same seed and sampling; at the SAE's hook every position but "
        "the first is steered (prompt and generated). For each generated position both "
        "runs report the log-probability of each feature's top promoted tokens. The first "
        "request loads the language model (seconds). It shares live search's pool, rate "
        "limit (429/503 with Retry-After) and key policy."
    ),
)
async def steer_route(
    sae_id: SaeId,
    body: SteerBody,
    request: Request,
    caller: LiveCaller,
    session: ReadSession,
) -> SteerOut:
    check_rate(request, caller)
    sae = queries.get_sae(session, sae_id)
    limit = request.app.state.settings.steer_max_new_tokens
    spec = steer_request(body)
    steer.check_request(spec, d_sae=sae.d_sae, max_new_tokens=limit)  # 422 before a load
    model_name, revision, checkpoint, hook = runnable_sae(session, sae, "steer")
    result = await run_on_live_pool(
        request, steer.steer_for_sae, model_name, revision, checkpoint, hook, spec, limit
    )
    return SteerOut(
        sae_id=sae_id,
        hook=result.hook,
        method=result.method,
        prompt_tokens=result.prompt_tokens,
        promoted=[
            PromotedOut(index=p.index, token_ids=p.token_ids, tokens=p.tokens)
            for p in result.promoted
        ],  # fmt: skip
        default=_continuation(result.default),
        steered=_continuation(result.steered),
    )
