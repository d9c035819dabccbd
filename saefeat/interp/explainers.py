"""Explainers: one feature's evidence -> one short text. Same interface for all:
`name`, `prompt_version`, `model` (None when no LLM is involved) and `explain(evidence)`;
an explainer that is faster on many features at once also has `explain_many`.

- `offline`: the evidence in one sentence, what the feature fires on and what it makes
  more likely (`evidence_label`), no model; with an LLM configured, a gloss in brackets.
- `patchscope`: the subject model itself decodes the feature's direction
  (interp/patchscope.py), no extra model.
- `llm`: delphi's explainer over any OpenAI-compatible endpoint.

Every explainer's output is scored by the same scorers; the one shown is the best scored
(storage/catalog/explanations.headline_score).
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
from saefeat.storage.catalog.explanations import EXPLAINERS

MAX_EXPLANATION_CHARS = 300


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
    """Words (4+ word characters; word pieces joined: "decor" + "ators") with a token
    within `reach` tokens of a firing token in at least `min_windows` explain windows, in
    the most windows first, leaving out words already in `named`: what surrounds the
    activations, which says more than a common token alone."""
    seen = {word for token in named for word in token.split()}
    near: dict[str, set[int]] = defaultdict(set)
    for n, w in enumerate(evidence.explain):
        fired = [i for i, v in enumerate(w.values) if v > 0]
        for word, first, last in _words(w.tokens):
            close = any(first - reach <= f <= last + reach for f in fired)
            if close and word not in seen and _WORD.search(word):
                near[word].add(n)
    ranked = sorted(near.items(), key=lambda kv: -len(kv[1]))  # stable: first seen first
    return [word for word, ctxs in ranked if len(ctxs) >= min_windows][:k]


def _words(tokens: list[str]) -> list[tuple[str, int, int]]:
    """(word, its first token, its last token): a token that starts with a word character
    right after one that ends with one goes on the same word."""
    out: list[tuple[str, int, int]] = []
    for i, token in enumerate(tokens):
        glued = out and token[:1].isalnum() and tokens[i - 1][-1:].isalnum()
        if glued:
            word, first, _ = out[-1]
            out[-1] = (word + token, first, i)
        else:
            out.append((token.strip(), i, i))
    return out


_WORD = re.compile(r"\w{4}")  # shorter words are mostly function words
_ANY_WORD = re.compile(r"\w")
_WORD_START = re.compile(r"\s[^\W\d_]{2}")


def _shown(token: str) -> str:
    """A token or phrase as a label quotes it: stripped of edge spaces (a leading space is
    how tokenizers mark a word start, not part of the word), JSON-quoted so newlines and
    quote marks show; a token that is only whitespace stays as it is ("\n")."""
    return quote(token.strip() or token)


def _distinct(tokens: list[str], k: int) -> list[str]:
    """The first k tokens that read differently once shown (" for" and "for" are one)."""
    out: list[str] = []
    seen: set[str] = set()
    for t in tokens:
        key = t.strip().lower() or t
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out[:k]


def fired_tokens(
    evidence: FeatureEvidence, *, max_tokens: int = 3, cover: float = 0.6
) -> list[str]:
    """The fewest tokens (at most max_tokens, read apart) that carry `cover` of the
    activation mass over the explain windows (`activation_mass`)."""
    picked: list[str] = []
    covered = 0.0
    for token, share in activation_mass(evidence):
        covered += share
        if token.strip().lower() not in {p.strip().lower() for p in picked}:
            picked.append(token)
        if covered >= cover or len(picked) >= max_tokens:
            break
    return picked


def firing_phrase(evidence: FeatureEvidence, token: str, *, min_share: float = 0.5) -> str | None:
    """The two-token phrase the feature's top token most often fires in ("for" ->
    "for example", " York" -> "New York"): the commonest of (previous token + token) and
    (token + next token), the other token holding a word character, over the explain
    windows where the token fires, if it is in at least `min_share` of them and at least
    two; else None."""
    phrases: dict[str, set[int]] = defaultdict(set)
    windows: set[int] = set()
    for n, w in enumerate(evidence.explain):
        for i, (t, v) in enumerate(zip(w.tokens, w.values, strict=True)):
            if v <= 0 or t != token:
                continue
            windows.add(n)
            if i > 0 and _ANY_WORD.search(w.tokens[i - 1]):
                phrases[w.tokens[i - 1] + t].add(n)
            if i + 1 < len(w.tokens) and _ANY_WORD.search(w.tokens[i + 1]):
                phrases[t + w.tokens[i + 1]].add(n)
    if not phrases:
        return None
    phrase, seen = max(phrases.items(), key=lambda kv: len(kv[1]))  # first seen wins ties
    if len(seen) < 2 or len(seen) < min_share * len(windows):
        return None
    return phrase


def evidence_label(evidence: FeatureEvidence, *, n_promoted: int = 3) -> str:
    """What the feature fires on and what it makes more likely, in one sentence:

        fires on "for" in "for example", near "attribute"; makes "example", "instance" more likely

    The tokens carrying most of its activation mass (`fired_tokens`), the phrase they fire
    in (`firing_phrase` of the first that has one), the words around its activations in
    several windows (`context_words`), and the top of what it promotes
    (`evidence.promoted`: its measured effect on the next token when indexing stored one,
    else the vocabulary projection; `evidence.promoted_source` says which)."""
    parts: list[str] = []
    fired = fired_tokens(evidence)
    if fired:
        head = "fires on " + ", ".join(_shown(t) for t in fired)
        phrase = next(filter(None, (firing_phrase(evidence, t) for t in fired)), None)
        named = list(fired)
        if phrase is not None:
            head += " in " + _shown(phrase)
            named.append(phrase)
        near = context_words(evidence, named, k=2)
        if near:
            head += ", near " + ", ".join(_shown(w) for w in near)
        parts.append(head)
    promoted = [t for t in evidence.promoted if t.strip()]
    if evidence.promoted_source == "projection":
        # The raw projection's top is often word pieces ("itoneal", "ispens"): name the
        # word starts (a leading space, two letters) when there are any.
        promoted = [t for t in promoted if _WORD_START.match(t)] or promoted
    promoted = _distinct(promoted, n_promoted)
    if promoted:
        parts.append("makes " + ", ".join(_shown(t) for t in promoted) + " more likely")
    if not parts:
        return "no activating tokens in its examples"
    return "; ".join(parts)


_QUOTED = r'"(?:[^"\\]|\\.)*"'
_SEGMENT = r'(?:tokens|near|promotes): ""(?:, "")*'
# offline-v2, stored before: 'tokens: " f", " g"; near: "lambda"' (quoted strings emptied)
_LABEL_V2_SKELETON = re.compile(rf"{_SEGMENT}(?:; {_SEGMENT})*")
# What the templated explainers write (offline-v3, patchscope-v1): clauses of prose with
# quoted tokens, split by "; ", an optional LLM gloss in brackets at the end.
_CLAUSE_KEYS = {
    "fires on ": "fires_on",
    "makes ": "promotes",
    "the model reads it as ": "reads_as",
    "the model continues it with ": "continues",
}


def label_parts(explanation: str) -> dict[str, list[str]] | None:
    """A templated explanation's quoted strings by role, or None for free text:
    `fires_on` (tokens, then the phrase), `near` (context words), `promotes` (what it makes
    more likely), `reads_as` and `continues` (a Patchscope's readouts), `gloss` (the LLM's
    words in brackets). Reads the offline-v2 form ('tokens: ...; near: ...') too. Quoted
    strings may hold anything ("; " included): the clauses are split outside them."""
    text = explanation.strip()
    quoted = [json.loads(q) for q in re.findall(_QUOTED, text)]
    skeleton = re.sub(_QUOTED, '""', text)  # each quoted string as an empty pair
    m = re.search(r" \(([^()]*)\)$", skeleton)
    gloss: list[str] = []
    if m:
        head_quotes = skeleton[: m.start()].count('""')
        gloss_text = m.group(1)
        for q in quoted[head_quotes:]:
            gloss_text = gloss_text.replace('""', json.dumps(q, ensure_ascii=False), 1)
        gloss, skeleton, quoted = [gloss_text], skeleton[: m.start()], quoted[:head_quotes]
    values = iter(quoted)

    def take(piece: str) -> list[str]:
        return [next(values) for _ in range(piece.count('""'))]

    out: dict[str, list[str]] = defaultdict(list)
    if _LABEL_V2_SKELETON.fullmatch(skeleton):
        for segment in skeleton.split("; "):
            key, _, rest = segment.partition(": ")
            out[{"tokens": "fires_on"}.get(key, key)] += take(rest)
        return dict(out) | ({"gloss": gloss} if gloss else {})
    for clause in skeleton.split("; "):
        key = next((k for k in _CLAUSE_KEYS if clause.startswith(k)), None)
        if key is None:
            return None
        role = _CLAUSE_KEYS[key]
        body = clause[len(key) :]
        if role == "fires_on":
            body, _, near = body.partition(", near ")
            out[role] += take(body)
            out["near"] += take(near)
        else:
            out[role] += take(body)
    return dict(out) | ({"gloss": gloss} if gloss else {})


def key_words(explanation: str) -> list[str]:
    """The strings an explanation says the feature fires on, as a matcher should look for
    them in text: a templated label's tokens and phrase it fires on and a Patchscope's
    readouts (its only words), or what it makes more likely when there is nothing else;
    the words of 3+ letters of free text, less common function words. Not the context
    words ("near"): they are shared with the features around it, and they are not where
    it fires."""
    parts = label_parts(explanation)
    if parts is None:
        words = re.findall(r"[^\W\d_]{3,}", explanation.lower())
        return list(dict.fromkeys(w for w in words if w not in _FUNCTION_WORDS))
    roles = ("fires_on", "reads_as", "continues")
    words = [w.strip() for r in roles for w in parts.get(r, [])]
    if not any(words):
        words = [w.strip() for w in parts.get("promotes", [])]
    return list(dict.fromkeys(w for w in words if w))


_FUNCTION_WORDS = frozenset(
    "the and for that with this from are was were its their them they have has had not "
    "but any all can its into than then there these those what when where which who why "
    "how about words word token tokens text mentions feature fires".split()
)


def query_text(explanation: str) -> str:
    """What a sentence encoder should read for an explanation: a templated label's
    `key_words` and any gloss, as plain words; any other explanation as it is."""
    parts = label_parts(explanation)
    if parts is None:
        return explanation
    return " ".join(dict.fromkeys([*key_words(explanation), *parts.get("gloss", [])]))


class OfflineExplainer:
    """The evidence itself in one sentence (`evidence_label`), needing no LLM. With a
    client, a short gloss from the LLM is added in brackets:
    `fires on "f", "x" (identifiers in Python code)`."""

    name = "offline"

    def __init__(self, gloss: LLMClient | None = None):
        self.gloss = gloss
        self.model = gloss.model if gloss else None
        self.prompt_version = f"offline-v3+{prompts.GLOSS_VERSION}" if gloss else "offline-v3"

    def explain(self, evidence: FeatureEvidence) -> str:
        label = evidence_label(evidence)
        if self.gloss is None:
            return label[:MAX_EXPLANATION_CHARS]
        fragments = "\n".join(w.marked() for w in evidence.explain[:5])
        answer = self.gloss.chat(prompts.gloss_messages(fragments), max_tokens=16).text
        gloss = _first_line(answer).replace("<<", "").replace(">>", "").strip()[:60]
        gloss = gloss.replace("(", "").replace(")", "")
        if not gloss:
            raise LLMError(f"the LLM gave no gloss (answered {answer[:100]!r})")
        return f"{label[: MAX_EXPLANATION_CHARS - len(gloss) - 3]} ({gloss})"


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


def explain_all(explainer: Explainer, evidence: list[FeatureEvidence]) -> list[str | Exception]:
    """Each feature's text or the error that stopped it (in one call where it batches)."""
    many = getattr(explainer, "explain_many", None)
    if many is not None and evidence:
        try:
            return many(evidence)
        except Exception as e:  # noqa: BLE001 - recorded against each feature
            return [e] * len(evidence)
    out: list[str | Exception] = []
    for ev in evidence:
        try:
            out.append(explainer.explain(ev))
        except Exception as e:  # noqa: BLE001 - recorded against the feature
            out.append(e)
    return out


def make_explainer(name: str, client: LLMClient | None, subject=None) -> Explainer:
    """The explainer called `name`. `subject` (a patchscope.Subject: the SAE's model,
    checkpoint and hook) is what `patchscope` runs; the others ignore it."""
    if name == "offline":
        return OfflineExplainer(client)
    if name == "patchscope":
        from saefeat.interp.patchscope import PatchscopeExplainer

        return PatchscopeExplainer(subject)
    if name == "llm":
        if client is None:
            raise SpecError(
                "'llm' needs an endpoint: set SAEFEAT_LLM_BASE_URL and SAEFEAT_LLM_MODEL",
                field="explainer",
            )
        return LLMExplainer(client)
    raise SpecError(f"is {name!r}; use one of {list(EXPLAINERS)}", field="explainer")
