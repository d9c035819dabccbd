"""Explainers: one feature's evidence -> one short text. Same interface for all:
`name`, `prompt_version`, `model` (None when no LLM is involved) and `explain(evidence)`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Protocol

from saefeat.errors import SpecError
from saefeat.interp import prompts
from saefeat.interp.evidence import FeatureEvidence, quote
from saefeat.interp.llm import LLMClient, LLMError

MAX_EXPLANATION_CHARS = 300
EXPLAINERS = ("offline", "llm")


class Explainer(Protocol):
    name: str
    prompt_version: str
    model: str | None

    def explain(self, evidence: FeatureEvidence) -> str: ...


def activation_mass(evidence: FeatureEvidence) -> list[tuple[str, float]]:
    """Token strings and bigrams by the share of the feature's activation they carry over
    the explain windows, largest first. A bigram (previous token + token) replaces its
    last token when it carries at least 80% of that token's mass: the feature then reads
    the pair, not the token."""
    unigram: dict[str, float] = defaultdict(float)
    bigram: dict[tuple[str, str], float] = defaultdict(float)
    total = 0.0
    for w in evidence.explain:
        for i, (token, value) in enumerate(zip(w.tokens, w.values, strict=True)):
            if value <= 0:
                continue
            total += value
            unigram[token] += value
            if i > 0:
                bigram[(w.tokens[i - 1], token)] += value
    if total <= 0:
        return []
    items: dict[str, float] = {}
    for token, mass in unigram.items():
        pairs = [(p, m) for p, m in bigram.items() if p[1] == token]
        best = max(pairs, key=lambda pm: pm[1], default=None)
        if best is not None and best[1] >= 0.8 * mass and len(evidence.explain) > 1:
            items[best[0][0] + best[0][1]] = best[1] / total
        else:
            items[token] = mass / total
    return sorted(items.items(), key=lambda kv: -kv[1])


def context_words(
    evidence: FeatureEvidence, named: list[str], *, reach: int = 3, min_windows: int = 2, k: int = 3
) -> list[str]:
    """Words (4+ word characters) within `reach` tokens of a firing token in at least
    `min_windows` explain windows, in the most windows first, leaving out words already in
    `named`: what surrounds the activations, which says more than a common token alone."""
    seen = {word for token in named for word in token.split()}
    near: dict[str, set[int]] = defaultdict(set)
    for n, w in enumerate(evidence.explain):
        fired = [i for i, v in enumerate(w.values) if v > 0]
        for i, token in enumerate(w.tokens):
            word = token.strip()
            if word not in seen and _WORD.search(word) and any(abs(i - f) <= reach for f in fired):
                near[word].add(n)
    ranked = sorted(near.items(), key=lambda kv: -len(kv[1]))  # stable: first seen first
    return [word for word, ctxs in ranked if len(ctxs) >= min_windows][:k]


_WORD = re.compile(r"\w{4}")  # shorter words are mostly function words


def evidence_label(evidence: FeatureEvidence, *, max_tokens: int = 5, cover: float = 0.6) -> str:
    """`tokens: " f", " x"; near: "lambda"`: the fewest tokens (at most max_tokens) that carry
    `cover` of the activation mass, and the context words around them (`context_words`);
    the top of the vocabulary projection if no token fired."""
    picked, covered = [], 0.0
    for token, share in activation_mass(evidence):
        picked.append(token)
        covered += share
        if covered >= cover or len(picked) >= max_tokens:
            break
    if picked:
        label = "tokens: " + ", ".join(quote(t) for t in picked)
        near = context_words(evidence, picked)
        return label + ("; near: " + ", ".join(quote(w) for w in near) if near else "")
    # The projection only when the examples name nothing: in the label it adds words
    # that are not in the text the feature fires on, which the scorers then look for.
    if evidence.promoted:
        return "promotes: " + ", ".join(quote(t) for t in evidence.promoted[:3])
    return "no activating tokens in its examples"


_QUOTED = r'"(?:[^"\\]|\\.)*"'
_SEGMENT = rf"(?:tokens|near|promotes): {_QUOTED}(?:, {_QUOTED})*"
_LABEL = re.compile(rf"^{_SEGMENT}(?:; {_SEGMENT})*")


def query_text(explanation: str) -> str:
    """What a sentence encoder should read for an explanation: an offline label's quoted
    tokens as plain words (its keys and quote marks are not text the feature fires on),
    then any gloss; any other explanation as it is."""
    m = _LABEL.match(explanation)
    if m is None:
        return explanation
    words = [json.loads(q).strip() for q in re.findall(_QUOTED, m.group())]
    rest = explanation[m.end() :].strip().removeprefix("(").removesuffix(")")
    return " ".join(w for w in [*words, rest] if w)


class OfflineExplainer:
    """The evidence itself, needing no LLM. With a client, a short gloss from the LLM is
    added in brackets: `tokens: " f", " x" (identifiers in Python code)`."""

    name = "offline"

    def __init__(self, gloss: LLMClient | None = None):
        self.gloss = gloss
        self.model = gloss.model if gloss else None
        self.prompt_version = f"offline-v2+{prompts.GLOSS_VERSION}" if gloss else "offline-v2"

    def explain(self, evidence: FeatureEvidence) -> str:
        label = evidence_label(evidence)
        if self.gloss is None:
            return label
        fragments = "\n".join(w.marked() for w in evidence.explain[:5])
        answer = self.gloss.chat(prompts.gloss_messages(fragments), max_tokens=16).text
        gloss = _first_line(answer).replace("<<", "").replace(">>", "").strip()[:60]
        if not gloss:
            raise LLMError(f"the LLM gave no gloss (answered {answer[:100]!r})")
        return f"{label} ({gloss})"[:MAX_EXPLANATION_CHARS]


class LLMExplainer:
    """delphi's default explainer: marked examples + promoted tokens -> one phrase."""

    name = "llm"
    prompt_version = prompts.EXPLAIN_VERSION

    def __init__(self, client: LLMClient):
        self.client = client
        self.model = client.model

    def explain(self, evidence: FeatureEvidence) -> str:
        messages = prompts.explain_messages(
            [w.marked() for w in evidence.explain], [quote(t) for t in evidence.promoted[:10]]
        )
        answer = self.client.chat(messages, max_tokens=96).text
        return parse_explanation(answer)


_MARKER = re.compile(r"\[EXPLANATION\]\s*:?\s*(.*)", re.IGNORECASE)


def parse_explanation(answer: str) -> str:
    """The text after the last `[EXPLANATION]:`, else the answer's first line; LLMError if
    nothing usable is left."""
    found = _MARKER.findall(answer)
    text = found[-1] if found else answer
    text = _first_line(text).replace("<<", "").replace(">>", "").strip(" \"'`*")
    if not re.search(r"\w", text):
        raise LLMError(f"the LLM answered no explanation: {answer[:120]!r}")
    return text[:MAX_EXPLANATION_CHARS]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def make_explainer(name: str, client: LLMClient | None) -> Explainer:
    if name == "offline":
        return OfflineExplainer(client)
    if name == "llm":
        if client is None:
            raise SpecError(
                "'llm' needs an endpoint: set SAEFEAT_LLM_BASE_URL and SAEFEAT_LLM_MODEL",
                field="explainer",
            )
        return LLMExplainer(client)
    raise SpecError(f"is {name!r}; use one of {list(EXPLAINERS)}", field="explainer")
