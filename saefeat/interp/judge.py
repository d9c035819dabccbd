"""delphi's classifier scorers with a judge LLM: detection (does the feature fire in this
window?) and fuzzing (are the marked tokens the ones it fires on?). The judge sees one
window per request and answers 1 or 0; the score is the balanced accuracy over the
windows it answered, and an AUROC over P(1) when the endpoint returns logprobs.
"""

from __future__ import annotations

import math
import re

import numpy as np

from saefeat.interp import prompts
from saefeat.interp.evidence import FeatureEvidence, Window
from saefeat.interp.llm import ChatAnswer, LLMClient, LLMError
from saefeat.interp.metrics import auroc, balanced_accuracy
from saefeat.interp.pool import ScoringPool
from saefeat.interp.scorers import DETAIL_WINDOWS, NotScorable, negatives, positives
from saefeat.storage.catalog.explanations import ScoreIn

_DIGIT = re.compile(r"^\W*(1|0|yes|no|true|false)\b", re.IGNORECASE)
_YES = {"1", "yes", "true"}


def read_answer(answer: ChatAnswer) -> tuple[bool | None, float | None]:
    """(the judge's verdict or None if unreadable, P(1) from the first 0/1 token's top
    logprobs or None)."""
    found = _DIGIT.match(answer.text)
    verdict = found.group(1).lower() in _YES if found else None
    probability = None
    for choice in answer.tokens or []:
        if choice.token.strip() not in ("0", "1"):
            continue
        p = {"0": 0.0, "1": 0.0}
        for token, logprob in choice.top.items():
            if token.strip() in p:
                p[token.strip()] += math.exp(logprob)
        if p["0"] + p["1"] > 0:
            probability = p["1"] / (p["0"] + p["1"])
        break
    return verdict, probability


class _Judge:
    name = ""
    system = ""
    prompt_version = ""
    shots: list[tuple[str, str, str]] = []

    def __init__(self, client: LLMClient, n_each: int = 5, seed: int = 0):
        self.client, self.n, self.seed = client, n_each, seed
        self.model = client.model

    def samples(self, evidence: FeatureEvidence, pool: ScoringPool) -> list[tuple[str, bool]]:
        raise NotImplementedError

    def score(self, explanation: str, evidence: FeatureEvidence, pool: ScoringPool) -> ScoreIn:
        samples = self.samples(evidence, pool)
        truth, said, probs, shown, unreadable = [], [], [], [], []
        for text, is_positive in samples:
            answer = self.client.chat(
                prompts.judge_messages(self.system, explanation, text, self.shots),
                max_tokens=3,
                logprobs=True,
            )
            verdict, p = read_answer(answer)
            if verdict is None:
                unreadable.append(answer.text[:40])
                continue
            truth.append(is_positive)
            said.append(verdict)
            probs.append(p)
            shown.append({"text": text[:200], "truth": is_positive, "said": verdict, "p": p})
        if len(truth) * 2 < len(samples):
            raise LLMError(
                f"the judge answered {len(unreadable)} of {len(samples)} {self.name} prompts "
                f"in a form we could not read (e.g. {unreadable[0]!r}); it must answer 1 or 0"
            )
        details: dict = {
            "prompt_version": self.prompt_version,
            "unreadable": len(unreadable),
            "windows": shown[: 2 * DETAIL_WINDOWS],
        }
        if all(p is not None for p in probs) and len(set(truth)) == 2:
            t = np.asarray(truth)
            pr = np.asarray(probs, dtype=np.float64)
            details["auroc"] = auroc(pr[t], pr[~t])
        value = balanced_accuracy(truth, said)
        return ScoreIn(self.name, value, len(truth), details, self.model)


class DetectionScorer(_Judge):
    """Held-out windows where the feature fires vs random pool windows where it does not."""

    name = "detection"
    system = prompts.DETECTION_SYSTEM
    shots = prompts.DETECTION_SHOTS
    prompt_version = prompts.DETECTION_VERSION

    def samples(self, evidence: FeatureEvidence, pool: ScoringPool) -> list[tuple[str, bool]]:
        pos = [w.text for w in positives(evidence, pool, self.n)]
        neg = [pool.texts[i] for i in negatives(evidence, pool, self.n, self.seed)]
        return _interleave(pos, neg, self.seed + evidence.index)


class FuzzingScorer(_Judge):
    """Held-out windows with the activating tokens marked vs the same windows with as
    many other tokens marked."""

    name = "fuzzing"
    system = prompts.FUZZING_SYSTEM
    shots = prompts.FUZZING_SHOTS
    prompt_version = prompts.FUZZING_VERSION

    def samples(self, evidence: FeatureEvidence, pool: ScoringPool) -> list[tuple[str, bool]]:
        rng = np.random.default_rng(self.seed + evidence.index)
        windows = [w for w in evidence.held_out if len(w.tokens) > 1][: self.n]
        pos, neg = [], []
        for w in windows:
            fires = [v > 0 for v in w.values]
            silent = [i for i, f in enumerate(fires) if not f]
            if not silent or not any(fires):
                continue
            pos.append(w.marked(fires))
            wrong = rng.choice(silent, size=min(sum(fires), len(silent)), replace=False)
            neg.append(w.marked([i in set(wrong.tolist()) for i in range(len(w.tokens))]))
        if not pos:
            raise NotScorable("no held-out window with both firing and silent tokens")
        return _interleave(pos, neg, self.seed + evidence.index)


def _interleave(pos: list[str], neg: list[str], seed: int) -> list[tuple[str, bool]]:
    samples = [(t, True) for t in pos] + [(t, False) for t in neg]
    order = np.random.default_rng(seed).permutation(len(samples))
    return [samples[i] for i in order]


__all__ = ["DetectionScorer", "FuzzingScorer", "Window", "read_answer"]
