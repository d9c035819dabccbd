"""Steering: generate from a prompt with SAE features added or clamped where the SAE's
decoder writes (its hook; a transcoder's output hook), beside the default continuation.
Its request and response bodies live here, with it."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from saefeat.analysis import steer
from saefeat.api.live_routes import (
    LIVE_PROBLEMS,
    LiveCaller,
    check_rate,
    refuse_crosscoders,
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
        description="With units=max_activation (the default), a multiple of the feature's "
        "max activation over the index, as Neuronpedia counts: add adds strength x max_act "
        "x W_dec[f], clamp sets the feature to strength x max_act (a feature page suggests "
        f"{steer.DEFAULT_STRENGTH:g} with clamp). With units=raw: add's coefficient of "
        "W_dec[f], clamp's value of the feature",
    )


class SteerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=4000, description="Text to continue")
    features: list[SteerFeature] = Field(
        description=f"1..{steer.MAX_FEATURES} features and their strengths"
    )
    method: Literal["add", "clamp"] = Field(
        default="add",
        description="add: y + s * W_dec[f]; clamp: encode, set the feature to s, decode, "
        "keep the SAE's error term (s: the strength in its units). y is the hook the "
        "decoder writes: the SAE's hook, a transcoder's output hook (its clamp encodes "
        "the input hook of the same forward)",
    )
    units: Literal["max_activation", "raw"] = Field(
        default="max_activation",
        description="What a strength counts: multiples of each feature's max activation "
        "(needs the SAE indexed and the feature to have fired), or raw values",
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


class AppliedOut(BaseModel):
    index: int
    strength: float = Field(description="As sent, in the request's units")
    unit: float = Field(description="The feature's max activation, or 1 for raw strengths")
    raw_strength: float = Field(
        description="strength x unit: what add scales W_dec[f] by, what clamp sets the feature to"
    )


class SteerOut(BaseModel):
    sae_id: str
    hook: str = Field(
        description="Where the features were added or clamped: the hook the decoder writes "
        "(an SAE's hook; a transcoder's output hook, e.g. blocks.8.hook_mlp_out)"
    )
    read_hook: str = Field(
        description="Where clamp encodes the SAE's input: the hook it reads (an SAE's is "
        "`hook`; a transcoder's its input hook)"
    )
    method: str
    units: str
    prompt_tokens: int
    applied: list[AppliedOut]
    promoted: list[PromotedOut]
    default: ContinuationOut
    steered: ContinuationOut
    default_cached: bool = Field(
        description="The default continuation was kept from an earlier request with the "
        "same prompt, seed, temperature and max_new_tokens (not generated again)"
    )


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
        "Both runs use the same seed and sampling; where the decoder writes (the SAE's "
        "hook; a transcoder's output hook) every position but the first is steered "
        "(prompt and generated). For each generated position both "
        "runs report the log-probability of each feature's top promoted tokens. Strengths "
        "are multiples of each feature's max activation unless units=raw. The default "
        "continuation is kept (bounded LRU) and reused by a later request with the same "
        "prompt, seed, temperature and max_new_tokens. The first "
        "request loads the language model (seconds). It shares live search's pool, rate "
        "limit (429/503 with Retry-After) and key policy. A crosscoder (several models "
        "or layers at once) cannot steer one model: 422 naming `sae_id`."
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
    refuse_crosscoders(sae, "steering")
    limit = request.app.state.settings.steer_max_new_tokens
    spec = steer_request(body)
    steer.check_request(spec, d_sae=sae.d_sae, max_new_tokens=limit)  # 422 before a load
    spec = steer.in_units(session, sae_id, spec, body.units)
    steer.check_request(spec, d_sae=sae.d_sae, max_new_tokens=limit)  # strength x unit
    model_name, revision, checkpoint, hook, hook_out = runnable_sae(session, sae, "steer")
    result = await run_on_live_pool(
        request, steer.steer_for_sae, model_name, revision, checkpoint, hook, spec, limit,
        hook_out,
    )  # fmt: skip
    return SteerOut(
        sae_id=sae_id,
        hook=result.hook,
        read_hook=result.read_hook or hook,
        method=result.method,
        units=body.units,
        prompt_tokens=result.prompt_tokens,
        applied=[
            AppliedOut(index=f.index, strength=f.strength, unit=f.unit, raw_strength=f.value)
            for f in spec.features
        ],  # fmt: skip
        promoted=[
            PromotedOut(index=p.index, token_ids=p.token_ids, tokens=p.tokens)
            for p in result.promoted
        ],  # fmt: skip
        default=_continuation(result.default),
        steered=_continuation(result.steered),
        default_cached=result.default_cached,
    )
