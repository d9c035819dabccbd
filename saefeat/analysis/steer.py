"""Steering generation with SAE features: add a feature's decoder direction, or clamp it.

Two continuations of one prompt are generated with the same seed and sampling: the
default one and the steered one. At the SAE's hook, on every position the model runs
except the first (the attention sink the SAEs never train on), the steered run changes
the activation x:

- `add`:   x + sum_f strength_f * W_dec[f]
- `clamp`: sae_decode(z') + (x - sae_decode(z)), with z = sae_encode(x) and z' = z with
  each named feature set to its strength: only the named features change, and the SAE's
  error term is kept, so whatever the SAE fails to reconstruct is left as it was.

Prompt positions are steered during the prompt's forward and each generated position
in its own step (the key/value cache holds the steered prompt), as Neuronpedia and
SAELens steer. `add` with strength 0 adds exact zeros, so its generation is the default
one token for token. For each generated position both runs report the log-probability
(at temperature 1) of each feature's top promoted tokens: the largest entries of
(W_dec[f] * final-norm scale) @ W_U^T, the vocabulary projection the index stores.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from saefeat.errors import SpecError
from saefeat.lm import LanguageModel, parse_hook
from saefeat.sae import SparseAutoencoder

Method = Literal["add", "clamp"]
METHODS: tuple[str, ...] = ("add", "clamp")
MAX_FEATURES = 16
MAX_STRENGTH = 1e6  # far beyond any useful value; keeps the arithmetic finite
MAX_TEMPERATURE = 10.0
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes no more
MAX_PROMPT_TOKENS = 512  # a CPU forward per request stays short
N_PROMOTED = 5


@dataclass(frozen=True)
class FeatureStrength:
    index: int
    strength: float


@dataclass(frozen=True)
class SteerRequest:
    prompt: str
    features: tuple[FeatureStrength, ...]
    method: Method = "add"
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    max_new_tokens: int = 32
    n_promoted: int = N_PROMOTED


@dataclass
class PromotedTokens:
    index: int  # the feature
    token_ids: list[int]
    tokens: list[str]


@dataclass
class Continuation:
    text: str
    token_ids: list[int]
    tokens: list[str]
    # [position][feature][promoted token]: log-probability at that generated position.
    promoted_logprobs: list[list[list[float]]]

    def mean_promoted_logprob(self) -> list[float]:
        """Per feature, the mean over positions and its promoted tokens (nan if none)."""
        n = len(self.promoted_logprobs[0]) if self.promoted_logprobs else 0
        out = []
        for f in range(n):
            values = [v for pos in self.promoted_logprobs for v in pos[f]]
            out.append(sum(values) / len(values) if values else math.nan)
        return out


@dataclass
class SteerResult:
    hook: str
    method: Method
    prompt_tokens: int
    promoted: list[PromotedTokens]
    default: Continuation
    steered: Continuation


def check_request(request: SteerRequest, *, d_sae: int, max_new_tokens: int) -> None:
    """SpecError naming the field for anything that cannot be run; needs no model (the
    prompt's length in tokens is checked by `encode_prompt`)."""
    if not request.prompt.strip():
        raise SpecError("must not be empty", field="prompt")
    if request.method not in METHODS:
        raise SpecError(f"is {request.method!r}; use one of {list(METHODS)}", field="method")
    if not request.features:
        raise SpecError("must name at least one feature", field="features")
    if len(request.features) > MAX_FEATURES:
        raise SpecError(f"has {len(request.features)} entries; at most {MAX_FEATURES}",
                        field="features")  # fmt: skip
    seen: set[int] = set()
    for n, f in enumerate(request.features):
        if not 0 <= f.index < d_sae:
            raise SpecError(f"is {f.index}; this SAE has features 0..{d_sae - 1}",
                            field=f"features.{n}.index")  # fmt: skip
        if f.index in seen:
            raise SpecError(f"feature {f.index} is named twice", field=f"features.{n}.index")
        seen.add(f.index)
        if not math.isfinite(f.strength) or abs(f.strength) > MAX_STRENGTH:
            raise SpecError(f"is {f.strength}; use a finite number within ±{MAX_STRENGTH:g}",
                            field=f"features.{n}.strength")  # fmt: skip
    if not math.isfinite(request.temperature) or not 0 <= request.temperature <= MAX_TEMPERATURE:
        raise SpecError(f"is {request.temperature}; use 0 (greedy) to {MAX_TEMPERATURE:g}",
                        field="temperature")  # fmt: skip
    if not 0 <= request.seed <= MAX_SEED:
        raise SpecError(f"is {request.seed}; use 0..{MAX_SEED}", field="seed")
    if not 1 <= request.max_new_tokens <= max_new_tokens:
        raise SpecError(f"is {request.max_new_tokens}; use 1..{max_new_tokens}",
                        field="max_new_tokens")  # fmt: skip
    if not 1 <= request.n_promoted <= 50:
        raise SpecError(f"is {request.n_promoted}; use 1..50", field="n_promoted")


def context_length(lm: LanguageModel) -> int:
    """Tokens the model attends over (prompt + continuation); `encode_prompt` also caps
    the prompt at MAX_PROMPT_TOKENS so a CPU request stays short."""
    n = getattr(lm.model.config, "max_position_embeddings", None) or MAX_PROMPT_TOKENS
    return int(n)


def encode_prompt(lm: LanguageModel, request: SteerRequest) -> torch.Tensor:
    """[1, seq] prompt ids; SpecError on `prompt` when it and the continuation do not fit."""
    ids = lm.tokenizer(request.prompt, return_tensors="pt").input_ids  # type: ignore[operator]
    n = ids.shape[1]
    room = context_length(lm) - request.max_new_tokens
    limit = min(MAX_PROMPT_TOKENS, room)
    if n > limit:
        raise SpecError(
            f"is {n} tokens; with max_new_tokens={request.max_new_tokens} it may have at most "
            f"{limit} (the model's context is {context_length(lm)} tokens)",
            field="prompt",
        )
    return ids


@torch.no_grad()
def promoted_tokens(
    lm: LanguageModel, sae: SparseAutoencoder, indices: list[int], n: int
) -> list[PromotedTokens]:
    """Each feature's `n` most promoted tokens by the direct path through the unembedding
    (the formula of saefeat.features.vocab, for just these rows)."""
    W_U, scale = lm.unembedding()
    rows = sae.W_dec[indices].detach().float().to(W_U.device)
    if scale is not None:
        rows = rows * scale.to(W_U.device)
    top = (rows @ W_U.T).topk(n, dim=1).indices.tolist()
    decode = lm.tokenizer.decode  # type: ignore[attr-defined]
    return [
        PromotedTokens(f, ids, [decode([i]) for i in ids])
        for f, ids in zip(indices, top, strict=True)
    ]


Edit = Callable[[torch.Tensor], torch.Tensor]


def make_edit(sae: SparseAutoencoder, request: SteerRequest) -> Edit:
    """The function the hook applies to activations [..., d_in]."""
    idx = torch.tensor([f.index for f in request.features], device=sae.W_dec.device)
    strength = torch.tensor([f.strength for f in request.features], device=sae.W_dec.device)
    W_dec = sae.W_dec.detach()

    if request.method == "add":
        direction = (strength.to(W_dec.dtype)[:, None] * W_dec[idx]).sum(0)

        def add(x: torch.Tensor) -> torch.Tensor:
            return x + direction.to(x.dtype)

        return add

    def clamp(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(W_dec.dtype)
        z = sae.dense_activations(flat)
        x_hat = z @ W_dec + sae.b_dec
        error = flat - x_hat
        z[:, idx] = strength.to(z.dtype)
        return ((z @ W_dec + sae.b_dec) + error).to(x.dtype).reshape(x.shape)

    return clamp


class _Steering:
    """Registers `edit` at the hook for the duration of a `with` block. Position 0 of the
    sequence is left alone: only the first forward (the prompt) contains it."""

    def __init__(self, lm: LanguageModel, hook: str, edit: Edit):
        self.lm, self.point, self.edit = lm, parse_hook(hook), edit
        self.first = True
        self.handle = None

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        if self.first:
            self.first = False
            return torch.cat([t[:, :1], self.edit(t[:, 1:])], dim=1)
        return self.edit(t)

    def __enter__(self) -> _Steering:
        module = self.lm.module_for(self.point)
        if self.point.kind == "resid_pre":

            def pre(module, args, kwargs):
                if args:
                    return (self._apply(args[0]), *args[1:]), kwargs
                kwargs["hidden_states"] = self._apply(kwargs["hidden_states"])
                return args, kwargs

            self.handle = module.register_forward_pre_hook(pre, with_kwargs=True)
        else:

            def post(module, args, output):
                if isinstance(output, tuple):
                    return (self._apply(output[0]), *output[1:])
                return self._apply(output)

            self.handle = module.register_forward_hook(post)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


def _forward_arguments(model: torch.nn.Module) -> tuple[str, dict]:
    """(name of the forward's KV-cache argument, extra arguments): transformers 5 renamed
    `past_key_values` to `cache`; `logits_to_keep=1` skips the prompt's other logits
    where the family takes it."""
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), extra


@torch.inference_mode()
def generate(
    lm: LanguageModel,
    ids: torch.Tensor,
    request: SteerRequest,
    watch: list[list[int]],
) -> Continuation:
    """Sample `max_new_tokens` (stopping at EOS) with the request's seed and temperature;
    `watch[f]` are the token ids whose log-probabilities are reported per position."""
    device = lm.device
    generator = torch.Generator(device="cpu").manual_seed(request.seed)
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    watch_ids = torch.tensor(watch, device=device)
    ids = ids.to(device)
    cache_arg, extra = _forward_arguments(lm.model)
    past = None
    step_ids = ids
    out_ids: list[int] = []
    logprobs: list[list[list[float]]] = []
    for _ in range(request.max_new_tokens):
        kwargs = {cache_arg: past} if past is not None else {}
        result = lm.model(input_ids=step_ids, use_cache=True, **extra, **kwargs)
        past = result.past_key_values
        logits = result.logits[0, -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        logprobs.append(logp[watch_ids].tolist())
        if request.temperature == 0:
            token = int(logits.argmax())
        else:
            # Shifted so the best token's logit is 0, in float64: a tiny temperature sends
            # the others to -inf (probability 0) instead of inf - inf = nan.
            shifted = (logits.double() - logits.max()) / request.temperature
            probs = torch.softmax(shifted, dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=generator))
        out_ids.append(token)
        if token == eos:
            break
        step_ids = torch.tensor([[token]], device=device)
    decode = lm.tokenizer.decode  # type: ignore[attr-defined]
    return Continuation(decode(out_ids), out_ids, [decode([t]) for t in out_ids], logprobs)


def steer(
    lm: LanguageModel, sae: SparseAutoencoder, hook: str, request: SteerRequest,
    *, max_new_tokens: int = 64,
) -> SteerResult:  # fmt: skip
    """The default and the steered continuation of `request.prompt`, side by side."""
    check_request(request, d_sae=sae.cfg.d_sae, max_new_tokens=max_new_tokens)
    if lm.is_encoder:
        raise SpecError(f"{lm.name} is an encoder; steering needs a model that generates",
                        field="sae_id")  # fmt: skip
    lm.check_hooks([hook])
    ids = encode_prompt(lm, request)
    promoted = promoted_tokens(lm, sae, [f.index for f in request.features], request.n_promoted)
    watch = [p.token_ids for p in promoted]
    default = generate(lm, ids, request, watch)
    with _Steering(lm, hook, make_edit(sae, request)):
        steered = generate(lm, ids, request, watch)
    return SteerResult(hook, request.method, int(ids.shape[1]), promoted, default, steered)


def steer_for_sae(
    model_name: str,
    revision: str | None,
    checkpoint: str,
    hook: str,
    request: SteerRequest,
    max_new_tokens: int,
) -> SteerResult:
    """Load (once) the model and SAE named by a catalog row and run `steer`: the one call
    the API route and the CLI make (and the one to hand to a worker pool)."""
    from saefeat.features import live

    # One forward at a time on the shared cached model: the steering hook stays out of
    # any other request's forward.
    lm, sae, forward_lock = live.loaded(model_name, revision, checkpoint)
    with forward_lock:
        return steer(lm, sae, hook, request, max_new_tokens=max_new_tokens)
