"""Is steering any good? Two measurements the benchmark (bench/readable.py) calls.

`steer_concept_success(session, sae_id, ...)`: for N readable features
(features/readable.py picks them) clamp each at `strength` x its max activation on a few
neutral prompts, greedy, and ask whether its target tokens became more likely than in the
default continuation. A feature's target tokens are one of (`source`):

- `measured`: its top measured next-token effects (table token_effects, method
  'measured', side 'up'): what the feature makes more likely where it fires;
- `promoted`: its top promoted tokens by the direct vocabulary projection;
- `label`: the tokens its current label quotes (the offline explainer writes
  'tokens: " function", " Function"; near: ...'; only the part before "near:" counts,
  the rest is context), each the first token of the quoted string;
- `fired`: the token its top examples fire on (the readable pick's dominant token, in
  each spelling the examples have), what a readable feature's label quotes.

By default (`source=None`) the first of `measured`, `promoted` that the catalog has. The
output side, because that is what steering moves: a readable feature reads a token (the
' of' feature fires on " of"), and clamping it makes the model go on as if that token
were there, raising what follows it (' the', ' this'), not the token itself. On the
demo's SAE (SmolLM2-135M layer 15, 20 readable features, 3 prompts x 16 greedy tokens,
clamp): measured targets rose for 0.60 / 0.80 / 0.80 / 0.85 / 0.70 / 0.50 of features
at strength 2 / 4 / 6 / 8 / 10 / 16; label-or-fired targets for 0.65 at 4 and 0.50 at 8
(the issue's "clamping the 'finally' feature never produced 'finally'" is this, not only
a unit problem). At 8 and above the steered text is mostly one repeated word; at 4 it
still reads. The measured targets there were filled for the 20 features by
features/effects.measured_effects on their 4 strongest top examples (the demo catalog
was indexed before measured effects existed). Caveat: targets that include very common
tokens (' the', ' a') are raised by degenerate repetition too. Re-measured with the
current index at 4 / 6 / 10: 0.80 / 0.80 / 0.70 on the demo's SAE; at 4 / 6 / 8 / 10:
0.80 / 0.85 / 0.75 / 0.70 on an SAE of package READMEs (bench/RESULTS.md "## readable");
hence DEFAULT_STRENGTH 6.

"More likely" is the mean over generated positions and prompts of the target tokens'
total probability at each position (p summed over the targets, at temperature 1), steered
against default. The share of features where it rose is `ConceptSuccess.share`.

`measure_steer_speed(lm, sae, hook, ...)`: tokens/s of a steer call against plain
generation (transformers' `generate`, greedy, the same prompt and length) on the same
machine, interleaved, each kind's best round.
`steer_tok_s_over_generate` is the steered run with the default continuation kept (any
request after the first with that prompt); `cold_over_generate` the first request (the
default and the steered run together in one batch); `steer_over_loop` the steered run
against steer.py's own loop with no hook (what the hook costs). On the demo's SAE
(SmolLM2-135M, CPU, 1 thread, 16 tokens, best of 7): `generate` ~25 tokens/s; clamp
0.975x it with the default kept (0.92x the unhooked loop), 0.65x on a first request;
add 1.05x (1.00x), 0.66x. Under heavy load from other jobs the rounds varied 2x and
torch's default 2 threads slowed everything several-fold (measure with 1 thread there).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import torch

from saefeat.analysis.steer import (
    DEFAULT_STRENGTH,
    DefaultCache,
    FeatureStrength,
    SteerRequest,
    encode_prompt,
    generate,
    promoted_tokens,
    steer,
)
from saefeat.lm import LanguageModel
from saefeat.sae import SparseAutoencoder

CONCEPT_PROMPTS = ("I think that", "The story begins", "Here is what happened:")
N_TARGETS = 5  # measured or promoted tokens taken as a feature's targets
TargetSource = Literal["label", "fired", "measured", "promoted"]
SOURCES: tuple[TargetSource, ...] = ("measured", "promoted")  # the default, in order
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def label_quoted_tokens(text: str) -> list[str]:
    """The strings a label quotes, before any "near:" part (the explainer's context words)."""
    head = re.split(r"\bnear:", text, maxsplit=1)[0]
    out = []
    for m in _QUOTED.finditer(head):
        try:
            s = json.loads(f'"{m.group(1)}"')
        except json.JSONDecodeError:
            s = m.group(1)
        if s and s not in out:
            out.append(s)
    return out


def _first_tokens(tokenizer, strings: list[str]) -> list[int]:
    ids: list[int] = []
    for s in strings:
        enc = tokenizer(s, add_special_tokens=False).input_ids
        if enc and enc[0] not in ids:
            ids.append(int(enc[0]))
    return ids


@dataclass
class ConceptTrial:
    index: int
    max_activation: float
    source: TargetSource
    targets: list[str]
    default_prob: float  # mean over positions and prompts of the targets' total probability
    steered_prob: float
    texts: list[str] = field(default_factory=list)  # steered continuations, one per prompt

    @property
    def raised(self) -> bool:
        return self.steered_prob > self.default_prob


@dataclass
class ConceptSuccess:
    share: float  # of trials whose targets' probability rose
    strength: float
    method: str
    trials: list[ConceptTrial]

    @property
    def n(self) -> int:
        return len(self.trials)


def _fired_strings(candidate) -> list[str]:
    """The spellings of a readable pick's dominant token among its top examples' focus
    tokens, commonest first."""
    if candidate is None or not candidate.top_token:
        return []
    tops = [e.token_strs[e.focus] for e in candidate.examples if e.kind == "top"]
    same = [t for t in tops if (t.strip().lower() or t) == candidate.top_token]
    return [t for t, _ in Counter(same).most_common()]


def _targets(session, lm: LanguageModel, sae: SparseAutoencoder, feature, label: str | None,
             candidate, source: TargetSource | None) -> tuple[TargetSource, list[int]]:  # fmt: skip
    """(where the targets came from, their token ids), the first of SOURCES that has any,
    or only `source`."""
    from sqlalchemy import select

    from saefeat.storage.catalog.models import TokenEffect

    for kind in SOURCES if source is None else (source,):
        if kind == "label":
            ids = _first_tokens(lm.tokenizer, label_quoted_tokens(label)) if label else []
        elif kind == "fired":
            ids = _first_tokens(lm.tokenizer, _fired_strings(candidate))
        elif kind == "measured":
            ids = list(session.scalars(
                select(TokenEffect.token_id)
                .where(TokenEffect.feature_id == feature.id, TokenEffect.method == "measured",
                       TokenEffect.side == "up")
                .order_by(TokenEffect.rank).limit(N_TARGETS)
            ))  # fmt: skip
        else:
            ids = promoted_tokens(lm, sae, [feature.index], N_TARGETS)[0].token_ids
        if ids:
            return kind, ids
    return source or "promoted", []


def readable_features(session, sae_id: str, n: int) -> list:
    """Up to n readable features of the SAE (features/readable.py's `Candidate`s: the
    feature row, its examples and dominant token), best first."""
    from saefeat.features.readable import MAX_DENSITY, MIN_DENSITY, pick_readable
    from saefeat.storage.catalog import feature_reads, queries

    page = queries.list_features(session, sae_id, min_density=MIN_DENSITY,
                                 max_density=MAX_DENSITY, limit=500)  # fmt: skip
    return pick_readable(page.items, lambda f: feature_reads.feature_examples(session, f.id), n)


def _target_prob(result, positions: int | None = None) -> float:
    """Mean over generated positions of the total probability of the watched tokens."""
    rows = result.promoted_logprobs[:positions]
    if not rows:
        return 0.0
    return sum(sum(torch.tensor(pos[0]).exp().tolist()) for pos in rows) / len(rows)


def steer_concept_success(
    session,
    sae_id: str,
    *,
    n: int = 20,
    strength: float = DEFAULT_STRENGTH,
    method: Literal["add", "clamp"] = "clamp",
    prompts: tuple[str, ...] = CONCEPT_PROMPTS,
    max_new_tokens: int = 16,
    source: TargetSource | None = None,
    features: list[int] | None = None,
) -> ConceptSuccess:
    """Share of `n` readable features of SAE `sae_id` (or the `features` given by index)
    whose target tokens became more likely when steered at `strength` x max activation.
    Loads the SAE's model and checkpoint as the API does (saefeat.features.live)."""
    from saefeat.features import live
    from saefeat.storage.catalog import feature_reads, labels, queries
    from saefeat.storage.catalog.set_registry import sae_model

    row = queries.get_sae(session, sae_id)
    model_name, revision = sae_model(session, row)
    lm, sae, _ = live.loaded(model_name, revision, row.checkpoint_path)
    if features is None:
        candidates = readable_features(session, sae_id, n)
    else:
        from saefeat.features.readable import Candidate, top_token_mass

        candidates = []
        for i in features:
            f = queries.get_feature(session, sae_id, i)
            examples = feature_reads.feature_examples(session, f.id)
            candidates.append(Candidate(f, examples, *top_token_mass(examples)))
    current = labels.current_labels(session, [c.feature.id for c in candidates])
    trials = []  # steer() holds the model's lock itself; none is held over the queries
    for c in candidates:
        f = c.feature
        label = current[f.id].text if f.id in current else None
        kind, ids = _targets(session, lm, sae, f, label, c, source)
        if not ids:
            continue
        feat = FeatureStrength(f.index, strength, float(f.max_activation))
        default_p, steered_p, texts = [], [], []
        for prompt in prompts:
            request = SteerRequest(prompt, (feat,), method, 0.0, 0, max_new_tokens)
            result = steer(lm, sae, row.hook_name, request, watch=[ids],
                           max_new_tokens=max_new_tokens)  # fmt: skip
            default_p.append(_target_prob(result.default))
            steered_p.append(_target_prob(result.steered))
            texts.append(result.steered.text)
        decode = lm.tokenizer.decode  # type: ignore[attr-defined]
        trials.append(ConceptTrial(
            f.index, float(f.max_activation), kind, [decode([t]) for t in ids],
            statistics.fmean(default_p), statistics.fmean(steered_p), texts,
        ))  # fmt: skip
    share = sum(t.raised for t in trials) / len(trials) if trials else 0.0
    return ConceptSuccess(share, strength, method, trials)


# ---- speed ------------------------------------------------------------------------------


@dataclass
class SteerSpeed:
    n_tokens: int  # asked for per run
    plain_tok_s: float  # transformers' generate, greedy, no hook
    steered_tok_s: float  # a steer call whose default continuation is kept
    cold_tok_s: float  # a steer call with nothing kept (default + steered in one batch)
    loop_tok_s: float = math.nan  # steer.generate with no hook: the steered run's own loop
    samples: dict[str, list[float]] = field(default_factory=dict)  # seconds per run

    @property
    def steer_tok_s_over_generate(self) -> float:
        return self.steered_tok_s / self.plain_tok_s

    @property
    def cold_over_generate(self) -> float:
        return self.cold_tok_s / self.plain_tok_s

    @property
    def steer_over_loop(self) -> float:
        """What the hook costs: the steered run against the same loop unhooked."""
        return self.steered_tok_s / self.loop_tok_s


@torch.inference_mode()
def measure_steer_speed(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    hook: str,
    *,
    feature: int = 0,
    strength: float = DEFAULT_STRENGTH,
    unit: float = 1.0,
    method: Literal["add", "clamp"] = "clamp",
    prompt: str = "The weather today is",
    n_tokens: int = 32,
    repeats: int = 5,
) -> SteerSpeed:
    """Tokens/s of steering against plain generation, `repeats` interleaved rounds after
    one warm-up, each kind's best round (on a shared machine a round's time is mostly how
    much other work ran beside it; the best is the closest to the code's own cost). A
    steered run that stops at EOS early counts the tokens it made (its prompt forward then
    weighs more: the ratio errs low, not high)."""
    request = SteerRequest(prompt, (FeatureStrength(feature, strength, unit),), method, 0.0, 0,
                           n_tokens)  # fmt: skip
    ids = encode_prompt(lm, request).to(lm.device)
    mask = torch.ones_like(ids)
    kept = DefaultCache()
    times: dict[str, list[float]] = {"plain": [], "loop": [], "steered": [], "cold": []}
    made: dict[str, list[int]] = {k: [] for k in times}

    def plain() -> int:
        out = lm.model.generate(ids, attention_mask=mask, max_new_tokens=n_tokens,
                                min_new_tokens=n_tokens, do_sample=False)  # fmt: skip
        return int(out.shape[1] - ids.shape[1])

    def loop() -> int:
        return len(generate(lm, ids, request, [[0]]).token_ids)

    def steered() -> int:
        result = steer(lm, sae, hook, request, max_new_tokens=n_tokens, cache=kept)
        assert result.default_cached
        return len(result.steered.token_ids)

    def cold() -> int:
        result = steer(lm, sae, hook, request, max_new_tokens=n_tokens, cache=DefaultCache())
        return len(result.steered.token_ids)

    steer(lm, sae, hook, request, max_new_tokens=n_tokens, cache=kept)  # keeps the default
    plain()  # warm-up
    for _ in range(repeats):
        for name, run in (("plain", plain), ("loop", loop), ("steered", steered), ("cold", cold)):
            t = time.perf_counter()
            made[name].append(run())
            times[name].append(time.perf_counter() - t)

    def rate(name: str) -> float:  # the best round: the one other load disturbed least
        return max(m / t for m, t in zip(made[name], times[name], strict=True))

    return SteerSpeed(n_tokens, rate("plain"), rate("steered"), rate("cold"), rate("loop"), times)


def steer_speed_for_sae(session, sae_id: str, *, feature: int | None = None,
                        **kwargs) -> SteerSpeed:  # fmt: skip
    """`measure_steer_speed` on the SAE of the catalog (its model and checkpoint), clamping
    `feature` (the first readable one when None) at DEFAULT_STRENGTH x its max activation."""
    from saefeat.features import live
    from saefeat.storage.catalog import queries
    from saefeat.storage.catalog.set_registry import sae_model

    row = queries.get_sae(session, sae_id)
    model_name, revision = sae_model(session, row)
    lm, sae, _ = live.loaded(model_name, revision, row.checkpoint_path)
    if feature is None:
        picked = readable_features(session, sae_id, 1)
        f = picked[0].feature if picked else queries.get_feature(session, sae_id, 0)
    else:
        f = queries.get_feature(session, sae_id, feature)
    unit = float(f.max_activation) if f.max_activation and f.max_activation > 0 else 1.0
    with lm.exclusive():  # timed alone: no other thread's forward in between
        return measure_steer_speed(lm, sae, row.hook_name, feature=f.index, unit=unit, **kwargs)
