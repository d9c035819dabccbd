"""Scorers: how well an explanation tells where its feature fires. One interface:
`name` (the score type), `model` (the judge or encoder behind it) and
`score(explanation, evidence, pool) -> ScoreIn`. A scorer raises NotScorable when the
feature leaves it nothing to score on (the score is left out and the reason noted), and
any other error fails the feature.

No-judge scorers live here; the judge-LLM ones (detection, fuzzing) in judge.py.
"""

from __future__ import annotations

import re
from typing import Protocol

import numpy as np

from saefeat.errors import SaefeatError, SpecError
from saefeat.interp.encoder import SentenceEncoder
from saefeat.interp.evidence import FeatureEvidence, Window
from saefeat.interp.explainers import key_words, query_text
from saefeat.interp.llm import LLMClient
from saefeat.interp.metrics import auroc
from saefeat.interp.pool import ScoringPool
from saefeat.storage.catalog.explanations import NO_JUDGE, ScoreIn

DETAIL_WINDOWS = 10  # windows kept in a score's details (what the page shows it rests on)


class NotScorable(SaefeatError):
    """This feature gives the scorer nothing to score on (e.g. no held-out window)."""


class Scorer(Protocol):
    name: str
    model: str | None

    def score(self, explanation: str, evidence: FeatureEvidence, pool: ScoringPool) -> ScoreIn: ...


class EmbeddingCache:
    """Sentence embeddings by text, so a batch of features is encoded in a few large
    batches (`prime`) instead of one short call per window."""

    def __init__(self, encoder: SentenceEncoder):
        self.encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}

    def prime(self, texts: list[str]) -> None:
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            for text, vector in zip(todo, self.encoder.encode(todo), strict=True):
                self._vectors[text] = vector

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.prime(texts)
        return np.stack([self._vectors[t] for t in texts])


def positives(evidence: FeatureEvidence, pool: ScoringPool, n: int) -> list[Window]:
    """Up to n held-out windows where the feature fires: the catalog's held-out examples,
    topped up with pool windows (outside the explain contexts) where it fires."""
    out = list(evidence.held_out[:n])
    if len(out) < n:
        usable = pool.usable(evidence.explain_contexts | {w.context_index for w in out})
        firing = usable[pool.acts[usable, evidence.index] > 0]
        strongest = firing[np.argsort(-pool.acts[firing, evidence.index], kind="stable")]
        for i in strongest[: n - len(out)]:
            out.append(_pool_window(pool, int(i), evidence.index))
    if not out:
        raise NotScorable("no held-out window where the feature fires")
    return out


def negatives(evidence: FeatureEvidence, pool: ScoringPool, n: int, seed: int) -> list[int]:
    """Up to n random pool windows (outside the explain contexts) where it does not fire."""
    usable = pool.usable(evidence.explain_contexts)
    silent = usable[pool.acts[usable, evidence.index] <= 0]
    if silent.size == 0:
        raise NotScorable("the feature fires on every pool window: no negatives")
    rng = np.random.default_rng(seed + evidence.index)
    return [int(i) for i in rng.choice(silent, size=min(n, silent.size), replace=False)]


def _pool_window(pool: ScoringPool, i: int, feature: int) -> Window:
    return Window(
        [pool.texts[i]], [float(pool.acts[i, feature])], int(pool.context_index[i]), "pool"
    )


class EmbeddingScorer:
    """AUROC of held-out positive vs random negative windows ranked by their cosine to the
    explanation under a sentence encoder (0.5 = chance)."""

    name = "embedding"

    def __init__(
        self, embed: EmbeddingCache, n_positive: int = 10, n_negative: int = 20, seed: int = 0
    ):
        self.embed, self.n_pos, self.n_neg, self.seed = embed, n_positive, n_negative, seed
        self.model = embed.encoder.name

    def score(self, explanation: str, evidence: FeatureEvidence, pool: ScoringPool) -> ScoreIn:
        pos = positives(evidence, pool, self.n_pos)
        neg = negatives(evidence, pool, self.n_neg, self.seed)
        e = self.embed([query_text(explanation)])[0]
        pos_sim = self.embed([w.text for w in pos]) @ e
        neg_sim = pool.embeddings[neg] @ e
        details = {
            "positives": [w.brief() | {"cosine": round(float(s), 4)}
                          for w, s in zip(pos, pos_sim, strict=True)][:DETAIL_WINDOWS],
            "negatives": [{"context": int(pool.context_index[i]), "kind": "pool",
                           "text": pool.texts[i][:200], "cosine": round(float(s), 4)}
                          for i, s in zip(neg, neg_sim, strict=True)][:DETAIL_WINDOWS],
        }  # fmt: skip
        return ScoreIn(
            "embedding", auroc(pos_sim, neg_sim), len(pos) + len(neg), details, self.model
        )


class ActivationScorer:
    """SASC's test without a judge, as an AUROC: retrieve the pool windows (outside the
    explain contexts) that hold most of the explanation's `key_words`, the nearest under
    the sentence encoder first among equals, and ask how often the feature fires more on
    a retrieved window than on one of the other pool windows (ties count half). 0.5: the
    explanation finds text no better than chance; 1: the feature is stronger on every
    retrieved window than on any other."""

    name = "activation"

    def __init__(self, embed: EmbeddingCache, n_retrieved: int = 20):
        self.embed, self.n = embed, n_retrieved
        self.model = embed.encoder.name

    def score(self, explanation: str, evidence: FeatureEvidence, pool: ScoringPool) -> ScoreIn:
        usable = pool.usable(evidence.explain_contexts)
        a = pool.acts[usable, evidence.index].astype(np.float64)
        if usable.size < 2 * self.n or not (a > 0).any():
            raise NotScorable("the feature never fires on the scoring pool")
        sims = pool.embeddings[usable] @ self.embed([query_text(explanation)])[0]
        keys = key_matchers(explanation)
        hits = np.array([keyword_hits(keys, pool.texts[j]) for j in usable], np.float64)
        order = np.lexsort((-sims, -hits))  # most words found, then nearest
        top, rest = order[: self.n], order[self.n :]
        value = auroc(a[top], a[rest])
        details = {
            "baseline_mean": float(a.mean()),
            "retrieved_mean": float(a[top].mean()),
            "retrieved_firing": int((a[top] > 0).sum()),
            "pool_windows": int(usable.size),
            "pool_firing": int((a > 0).sum()),
            "retrieved": [{"context": int(pool.context_index[usable[j]]), "kind": "pool",
                           "text": pool.texts[usable[j]][:200], "cosine": round(float(sims[j]), 4),
                           "words": int(hits[j]), "activation": float(a[j])} for j in top],
        }  # fmt: skip
        return ScoreIn("activation", value, len(top), details, self.model)


def key_matchers(explanation: str) -> list[re.Pattern]:
    """One case-blind pattern per `key_words` entry: at a word start when it begins with a
    letter or digit ("decor" finds "decorators", "the" not "other"), anywhere if not."""
    out = []
    for word in key_words(explanation):
        prefix = r"(?<![^\W_])" if word[:1].isalnum() else ""
        out.append(re.compile(prefix + re.escape(word), re.IGNORECASE))
    return out


def keyword_hits(matchers: list[re.Pattern], text: str) -> int:
    """How many of the patterns occur in `text`."""
    return sum(1 for m in matchers if m.search(text))


class KeywordScorer:
    """Detection with a literal judge, no model: AUROC of held-out windows where the
    feature fires against random pool windows where it does not, each scored by the share
    of the explanation's `key_words` found in it (ties count half). 0.5: its words are no
    likelier where the feature fires; 1: every firing window holds more of them than any
    silent one. It rewards naming the text a feature fires on; a concept named in other
    words scores low here and is the judge scorers' to test."""

    name = "keyword"
    model = None

    def __init__(self, n_positive: int = 10, n_negative: int = 20, seed: int = 0):
        self.n_pos, self.n_neg, self.seed = n_positive, n_negative, seed

    def score(self, explanation: str, evidence: FeatureEvidence, pool: ScoringPool) -> ScoreIn:
        keys = key_matchers(explanation)
        if not keys:
            raise NotScorable("the explanation names no words to look for")
        pos = positives(evidence, pool, self.n_pos)
        neg = negatives(evidence, pool, self.n_neg, self.seed)
        pos_hits = [keyword_hits(keys, w.text) / len(keys) for w in pos]
        neg_hits = [keyword_hits(keys, pool.texts[i]) / len(keys) for i in neg]
        details = {
            "words": [k.pattern for k in keys],
            "positives": [w.brief() | {"share": round(h, 4)}
                          for w, h in zip(pos, pos_hits, strict=True)][:DETAIL_WINDOWS],
            "negatives": [{"context": int(pool.context_index[i]), "kind": "pool",
                           "text": pool.texts[i][:200], "share": round(h, 4)}
                          for i, h in zip(neg, neg_hits, strict=True)][:DETAIL_WINDOWS],
        }  # fmt: skip
        return ScoreIn("keyword", auroc(pos_hits, neg_hits), len(pos) + len(neg), details)


def check_judges(names: list[str], *, has_llm: bool) -> None:
    """The scorers that need a judge LLM have one (SpecError naming `scorers`). The names
    themselves are ExplainSpec's to check."""
    judged = [n for n in names if n not in NO_JUDGE]
    if judged and not has_llm:
        raise SpecError(
            f"{judged[0]!r} needs a judge LLM: set SAEFEAT_LLM_BASE_URL and SAEFEAT_LLM_MODEL, "
            f"or use only {list(NO_JUDGE)}",
            field="scorers",
        )


def make_scorers(
    names: list[str], *, embed: EmbeddingCache | None, client: LLMClient | None, seed: int = 0
) -> list[Scorer]:
    from saefeat.interp.judge import DetectionScorer, FuzzingScorer

    check_judges(names, has_llm=client is not None)
    out: list[Scorer] = []
    for name in names:
        if name == "keyword":
            out.append(KeywordScorer(seed=seed))
        elif name in NO_JUDGE:
            assert embed is not None
            out.append(EmbeddingScorer(embed, seed=seed) if name == "embedding"
                       else ActivationScorer(embed))  # fmt: skip
        else:
            assert client is not None
            out.append(DetectionScorer(client, seed=seed) if name == "detection"
                       else FuzzingScorer(client, seed=seed))  # fmt: skip
    return out
