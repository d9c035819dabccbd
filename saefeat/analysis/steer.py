"""Steering generation with SAE features: add a feature's decoder direction, or clamp it.

Two continuations of one prompt are generated with the same seed and sampling: the
default one and the steered one. Where the SAE's decoder writes (`write_hook`: an SAE's
own hook; a transcoder's output hook, the MLP's output), on every position the model
runs except the first (the attention sink the SAEs never train on), the steered run
changes the activation y there:

- `add`:   y + sum_f s_f * W_dec[f]
- `clamp`: y + sum_f (s_f - z_f) * W_dec[f], with z = the SAE's encoding of the
  activations it reads, in the same forward (an SAE's: y itself; a transcoder's: its
  input hook's, the MLP's input). Decoding is linear in z, so for an SAE this is
  sae_decode(z') + (y - sae_decode(z)) with z' = z and each named feature set to s_f:
  only the named features change, and the error term is kept, so whatever the SAE fails
  to reconstruct (a transcoder: to predict, and its skip path) is left as it was.

Units. s_f = strength x unit: the API, the CLI and the feature page give strengths as
multiples of the feature's max activation over the index (Neuronpedia's convention:
`add` adds strength x max_act x W_dec[f], `clamp` sets the feature to strength x
max_act), set by `in_max_activation_units`; the unit is 1 for raw strengths
(`units="raw"`). A decoder row's norm is whatever training left (171.75 on the demo's
SAE), so a raw strength means nothing to a reader; a multiple of max activation is "this
feature, N times as strong as it ever fired". `DEFAULT_STRENGTH` is the clamp that
raises readable features' output tokens (analysis/steer_eval.py measures it).

Prompt positions are steered during the prompt's forward and each generated position
in its own step (the key/value cache holds the steered prompt), as Neuronpedia and
SAELens steer. `add` with strength 0 adds exact zeros, so its generation is the default
one token for token (its log-probabilities to float rounding: two rows of one batch may
differ in the last bits). For each generated position both runs report the log-probability
(at temperature 1) of each feature's top promoted tokens: the largest entries of
(W_dec[f] * final-norm scale) @ W_U^T, the vocabulary projection the index stores.

Cost. A repeated prompt costs one generation, a new one ~1.5: the default continuation
does not depend on the features, so it is kept in a bounded LRU (`DEFAULT_CACHE`, keyed by
model, prompt, seed, temperature and max_new_tokens) and a repeated prompt only
generates the steered run; on a miss the default and the steered run are one batch of
two rows (the hook edits row 1 only), ~1.5x one row's time on a CPU rather than 2x (a
small model's decode step is bound by reading its weights). The 22-25 s calls of issue 21
were two sequential generations on a 2-core machine loaded by other jobs, where torch's
two intra-op threads stall each other (~0.35 s a token; ~0.04 s with one thread idle);
the KV cache was already used and the hook (one new position per step through the SAE)
costs little next to the model's forward.
"""

from __future__ import annotations

import inspect
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from saefeat.errors import SpecError
from saefeat.lm import LanguageModel, edit_at, parse_hook
from saefeat.sae import SparseAutoencoder

Method = Literal["add", "clamp"]
METHODS: tuple[str, ...] = ("add", "clamp")
Units = Literal["max_activation", "raw"]
UNITS: tuple[str, ...] = ("max_activation", "raw")
# The strength the feature page suggests, in multiples of the feature's max activation,
# for `clamp`: the best of 4 / 6 / 8 / 10 over two SAEs (the demo's and one on package
# READMEs, 20 readable features each, steer_eval.steer_concept_success): the share whose
# measured-effect tokens became more likely was 0.80 / 0.80 / 0.85 / 0.70 on the demo's
# and 0.80 / 0.85 / 0.75 / 0.70 on the other; 6 is as good as 4 at worst, better on
# average, and reads better than 8, where the text is mostly one repeated word.
DEFAULT_STRENGTH = 6.0
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
    # What one unit of `strength` is: 1 for a raw strength; the feature's max activation
    # when the strength is a multiple of it (set by `in_max_activation_units`).
    unit: float = 1.0

    @property
    def value(self) -> float:
        """The raw strength: add's coefficient of W_dec[f], clamp's value of the feature."""
        return self.strength * self.unit


@dataclass(frozen=True)
class SteerRequest:
    prompt: str
    features: tuple[FeatureStrength, ...]
    method: Method = "add"
    temperature: float = 0.0  # 0 = greedy
    seed: int = 0
    max_new_tokens: int = 32
    n_promoted: int = N_PROMOTED


def in_max_activation_units(
    request: SteerRequest, max_activation: Mapping[int, float | None]
) -> SteerRequest:
    """The request with each feature's strength counted in multiples of its max
    activation (`max_activation[index]`, from the index). SpecError naming the feature
    when it has none: not indexed, or never fired (a multiple of 0 steers nothing)."""
    out = []
    for n, f in enumerate(request.features):
        m = max_activation.get(f.index)
        if m is None or not math.isfinite(m) or m <= 0:
            why = "is not indexed" if m is None else f"never fired in the index (max {m})"
            raise SpecError(
                f"feature {f.index} {why}, so a multiple of its max activation is undefined; "
                "send a raw strength (units: raw)",
                field=f"features.{n}.strength",
            )
        out.append(replace(f, unit=float(m)))
    return replace(request, features=tuple(out))


def in_units(session, sae_id: str, request: SteerRequest, units: Units) -> SteerRequest:
    """`request` with strengths in `units`: "raw" as given, "max_activation" multiples of
    each feature's max activation as the catalog's index of SAE `sae_id` holds it."""
    if units == "raw":
        return request
    if units != "max_activation":
        raise SpecError(f"is {units!r}; use one of {list(UNITS)}", field="units")
    from sqlalchemy import select

    from saefeat.storage.catalog.models import Feature

    indices = [f.index for f in request.features]
    found = dict(session.execute(
        select(Feature.index, Feature.max_activation)
        .where(Feature.sae_id == sae_id, Feature.index.in_(indices))
    ).all())  # fmt: skip
    return in_max_activation_units(request, found)


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
    hook: str  # where the edit was made: the decoder's hook (a transcoder's output hook)
    method: Method
    prompt_tokens: int
    promoted: list[PromotedTokens]
    default: Continuation
    steered: Continuation
    # Per feature, the raw strength applied (strength x unit).
    raw_strengths: list[float] = field(default_factory=list)
    default_cached: bool = False  # the default continuation came from DEFAULT_CACHE
    read_hook: str = ""  # where clamp encodes the SAE's input (an SAE's: `hook` itself)


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
        for value in (f.strength, f.value):
            if not math.isfinite(value) or abs(value) > MAX_STRENGTH:
                raise SpecError(f"is {value}; use a finite number within ±{MAX_STRENGTH:g}",
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


# (activations where the decoder writes [..., d_out], the read hook's of the same
# positions [..., d_in] or None) -> the written activations, edited
Edit = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_edit(sae: SparseAutoencoder, request: SteerRequest) -> Edit:
    """The function the hook applies: `edit(y, read)` with y the activations where the
    decoder writes and `read` those the SAE encodes at the same positions, which only a
    clamp uses (an SAE's are y: `read` may be left out; a transcoder's clamp needs it)."""
    idx = torch.tensor([f.index for f in request.features], device=sae.W_dec.device)
    strength = torch.tensor([f.value for f in request.features], device=sae.W_dec.device)
    W_dec = sae.W_dec.detach()

    if request.method == "add":
        direction = (strength.to(W_dec.dtype)[:, None] * W_dec[idx]).sum(0)

        def add(y: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
            return y + direction.to(y.dtype)

        return add

    def clamp(y: torch.Tensor, read: torch.Tensor | None = None) -> torch.Tensor:
        if read is None:
            if sae.cfg.is_transcoder:
                raise ValueError("a transcoder's clamp encodes the activations it reads: "
                                 "pass `read`, its input hook's")  # fmt: skip
            read = y
        z = sae.dense_activations(read.reshape(-1, read.shape[-1]).to(W_dec.dtype))
        # Only the named features move, each by (s_f - z_f) along its decoder row.
        delta = (strength.to(z.dtype) - z[:, idx]) @ W_dec[idx]
        flat = y.reshape(-1, y.shape[-1]).to(W_dec.dtype)
        return (flat + delta).to(y.dtype).reshape(y.shape)

    return clamp


class _Steering:
    """Registers `edit` at `hook` (where the decoder writes) for the duration of a `with`
    block, applied to the batch rows `rows` (all by default). Position 0 of the sequence
    is left alone: only the first forward (the prompt) contains it. With a `read_hook`
    other than `hook` (a transcoder's input), that hook's activations of the same forward
    are kept and handed to the edit beside the written ones."""

    def __init__(self, lm: LanguageModel, hook: str, edit: Edit, rows: slice = slice(None),
                 read_hook: str | None = None):  # fmt: skip
        self.lm, self.point, self.edit, self.rows = lm, parse_hook(hook), edit, rows
        self.read_point = parse_hook(read_hook) if read_hook not in (None, hook) else None
        self.first = True
        self.handles: list = []
        self.read: torch.Tensor | None = None

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        self.read = t
        return t

    def _apply(self, t: torch.Tensor) -> torch.Tensor:
        start = 1 if self.first else 0
        self.first = False
        read = t if self.read_point is None else self.read
        self.read = None
        if read is None:
            raise RuntimeError(f"{self.read_point.name} did not run before {self.point.name}")
        out = t.clone()
        out[self.rows, start:] = self.edit(t[self.rows, start:], read[self.rows, start:])
        return out

    def __enter__(self) -> _Steering:
        try:
            if self.read_point is not None:
                self.handles.append(edit_at(self.lm, self.read_point, self._keep))
            self.handles.append(edit_at(self.lm, self.point, self._apply))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        while self.handles:
            self.handles.pop().remove()


def _forward_arguments(model: torch.nn.Module) -> tuple[str, dict]:
    """(name of the forward's KV-cache argument, extra arguments): transformers 5 renamed
    `past_key_values` to `cache`; `logits_to_keep=1` skips the prompt's other logits
    where the family takes it."""
    params = inspect.signature(model.forward).parameters
    extra = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    return ("cache" if "cache" in params else "past_key_values"), extra


@torch.inference_mode()
def _sample(
    lm: LanguageModel, ids: torch.Tensor, request: SteerRequest, watch: list[list[int]],
    n_rows: int,
) -> list[Continuation]:  # fmt: skip
    """`n_rows` continuations of `ids` [1, seq] in one batch, each row sampled with its
    own generator seeded with the request's seed (so a row is what it would be alone),
    each stopping at EOS or `max_new_tokens`. Whatever hook is registered edits the rows
    it is told to. The caller holds the model's lock (`lm.exclusive()`) throughout."""
    device = lm.device
    generators = [torch.Generator(device="cpu").manual_seed(request.seed) for _ in range(n_rows)]
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    watch_ids = torch.tensor(watch, device=device)
    cache_arg, extra = _forward_arguments(lm.model)
    past = None
    step_ids = ids.to(device).expand(n_rows, -1)
    out_ids: list[list[int]] = [[] for _ in range(n_rows)]
    logprobs: list[list[list[list[float]]]] = [[] for _ in range(n_rows)]
    running = list(range(n_rows))
    for _ in range(request.max_new_tokens):
        kwargs = {cache_arg: past} if past is not None else {}
        result = lm.model(input_ids=step_ids, use_cache=True, **extra, **kwargs)
        past = result.past_key_values
        logits = result.logits[:, -1].float()
        watched = torch.log_softmax(logits, dim=-1)[:, watch_ids].tolist()
        next_ids = [eos if eos is not None else 0] * n_rows  # rows that stopped: ignored
        for row in running:
            logprobs[row].append(watched[row])
            if request.temperature == 0:
                token = int(logits[row].argmax())
            else:
                # Shifted so the best token's logit is 0, in float64: a tiny temperature
                # sends the others to -inf (probability 0) instead of inf - inf = nan.
                shifted = (logits[row].double() - logits[row].max()) / request.temperature
                probs = torch.softmax(shifted, dim=-1).cpu()
                token = int(torch.multinomial(probs, 1, generator=generators[row]))
            out_ids[row].append(token)
            next_ids[row] = token
        running = [row for row in running if out_ids[row][-1] != eos]
        if not running:
            break
        step_ids = torch.tensor(next_ids, device=device)[:, None]
    decode = lm.tokenizer.decode  # type: ignore[attr-defined]
    return [
        Continuation(decode(out), out, [decode([t]) for t in out], lp)
        for out, lp in zip(out_ids, logprobs, strict=True)
    ]


def generate(
    lm: LanguageModel,
    ids: torch.Tensor,
    request: SteerRequest,
    watch: list[list[int]],
) -> Continuation:
    """Sample `max_new_tokens` (stopping at EOS) with the request's seed and temperature;
    `watch[f]` are the token ids whose log-probabilities are reported per position."""
    with lm.exclusive():  # one generation, one piece
        return _sample(lm, ids, request, watch, 1)[0]


@torch.inference_mode()
def watched_logprobs(
    lm: LanguageModel, ids: torch.Tensor, continuation: list[int], tokens: list[int]
) -> torch.Tensor:
    """[len(continuation), len(tokens)]: the log-probability of each of `tokens` at each
    generated position of `continuation` after prompt `ids` [1, seq], in one forward over
    prompt + continuation (teacher forcing) instead of one per position."""
    full = torch.cat([ids[0], torch.tensor(continuation[:-1], dtype=ids.dtype)])[None]
    n = len(continuation)
    params = inspect.signature(lm.model.forward).parameters
    extra = {"logits_to_keep": n} if "logits_to_keep" in params else {}
    with lm.exclusive():
        logits = lm.model(input_ids=full.to(lm.device), use_cache=False, **extra).logits[0, -n:]
    return torch.log_softmax(logits.float(), dim=-1)[:, tokens].cpu()


# ---- the default continuation, kept --------------------------------------------------


@dataclass
class DefaultRun:
    """A default (unsteered) continuation as kept: its tokens, and each watched token's
    log-probability per position (more are filled in by one forward when asked for)."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    logprobs: dict[int, list[float]]  # token id -> log-probability at each position


class DefaultCache:
    """A bounded LRU of default continuations, keyed by (model, revision, prompt, seed,
    temperature, max_new_tokens): the default continuation depends on nothing else (not
    the SAE, hook, features or strengths), so a repeated prompt only generates the
    steered run. Entries are small (token ids and a few watched log-probabilities)."""

    def __init__(self, maxsize: int = 256):
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._runs: OrderedDict[tuple, DefaultRun] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(lm: LanguageModel, request: SteerRequest) -> tuple:
        return (lm.name, lm.revision, id(lm.model), str(lm.device), request.prompt,
                request.seed, float(request.temperature), request.max_new_tokens)  # fmt: skip

    def get(self, key: tuple) -> DefaultRun | None:
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                self.misses += 1
                return None
            self.hits += 1
            self._runs.move_to_end(key)
            return run

    def put(self, key: tuple, run: DefaultRun) -> None:
        with self._lock:
            self._runs[key] = run
            self._runs.move_to_end(key)
            while len(self._runs) > self.maxsize:
                self._runs.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._runs.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._runs)


DEFAULT_CACHE = DefaultCache()


def _kept(c: Continuation, watch: list[list[int]]) -> DefaultRun:
    logprobs: dict[int, list[float]] = {}
    for f, ids in enumerate(watch):
        for k, t in enumerate(ids):
            logprobs.setdefault(t, [pos[f][k] for pos in c.promoted_logprobs])
    return DefaultRun(c.text, list(c.token_ids), list(c.tokens), logprobs)


def _from_kept(
    lm: LanguageModel, ids: torch.Tensor, run: DefaultRun, watch: list[list[int]]
) -> Continuation:
    missing = sorted({t for w in watch for t in w} - run.logprobs.keys())
    if missing:  # tokens no earlier request watched: one forward over the kept tokens
        values = watched_logprobs(lm, ids, run.token_ids, missing).T.tolist()
        run.logprobs.update(zip(missing, values, strict=True))
    per_pos = [[[run.logprobs[t][p] for t in w] for w in watch] for p in range(len(run.token_ids))]
    return Continuation(run.text, list(run.token_ids), list(run.tokens), per_pos)


def steer(
    lm: LanguageModel, sae: SparseAutoencoder, hook: str, request: SteerRequest,
    *, max_new_tokens: int = 64, watch: list[list[int]] | None = None,
    cache: DefaultCache | None = DEFAULT_CACHE, hook_out: str | None = None,
) -> SteerResult:  # fmt: skip
    """The default and the steered continuation of `request.prompt`, side by side.

    `hook`: the hook the SAE reads (the catalog's `hook_name`); `hook_out`: the one its
    decoder writes, where the edit is made (default: a transcoder's `cfg.hook_out`, else
    `hook`). `watch[f]`: the token ids whose log-probabilities are reported for feature f
    (its top promoted tokens when None). `cache`: where the default continuation is kept
    (None: generate it every time)."""
    check_request(request, d_sae=sae.cfg.d_sae, max_new_tokens=max_new_tokens)
    if lm.is_encoder:
        raise SpecError(f"{lm.name} is an encoder; steering needs a model that generates",
                        field="sae_id")  # fmt: skip
    write = hook_out or sae.cfg.hook_out or hook
    lm.check_hooks(list(dict.fromkeys([hook, write])))
    ids = encode_prompt(lm, request)
    promoted = promoted_tokens(lm, sae, [f.index for f in request.features], request.n_promoted)
    if watch is None:
        watch = [p.token_ids for p in promoted]
    edit = make_edit(sae, request)
    key = DefaultCache.key(lm, request)
    kept = cache.get(key) if cache is not None else None
    # The model's lock for the whole call (the steering hook registers on a model other
    # threads run; the kept default's plain forward must not meet another's hook).
    with lm.exclusive():
        if kept is not None:
            default = _from_kept(lm, ids, kept, watch)
            with _Steering(lm, write, edit, read_hook=hook):
                steered = _sample(lm, ids, request, watch, 1)[0]
        else:  # both in one batch: row 0 the default, row 1 steered
            with _Steering(lm, write, edit, rows=slice(1, 2), read_hook=hook):
                default, steered = _sample(lm, ids, request, watch, 2)
    if kept is None and cache is not None:
        cache.put(key, _kept(default, watch))
    return SteerResult(write, request.method, int(ids.shape[1]), promoted, default, steered,
                       [f.value for f in request.features], kept is not None,
                       read_hook=hook)  # fmt: skip


def steer_for_sae(
    model_name: str,
    revision: str | None,
    checkpoint: str,
    hook: str,
    request: SteerRequest,
    max_new_tokens: int,
    hook_out: str | None = None,
) -> SteerResult:
    """Load (once) the model and SAE named by a catalog row and run `steer` (`hook` the
    row's hook, `hook_out` a transcoder's output hook): the one call the API route and
    the CLI make (and the one to hand to a worker pool)."""
    from saefeat.features import live

    lm, sae, _ = live.loaded(model_name, revision, checkpoint)
    # steer holds lm's lock
    return steer(lm, sae, hook, request, max_new_tokens=max_new_tokens, hook_out=hook_out)
