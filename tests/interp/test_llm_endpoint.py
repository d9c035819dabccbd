"""The LLM explainer and the judge scorers end to end over HTTP against a real
OpenAI-compatible server (llama.cpp serving SmolLM2-135M). A 135M model explains and
judges badly; these tests check the path, not the quality."""

from __future__ import annotations

import numpy as np

from saefeat.interp.evidence import FeatureEvidence, Window
from saefeat.interp.explainers import LLMExplainer, OfflineExplainer, label_parts
from saefeat.interp.judge import DetectionScorer, FuzzingScorer
from saefeat.interp.llm import LLMClient
from saefeat.interp.pool import ScoringPool
from saefeat.workers.explain import _Job, explain_batch

CODE = ["def", " f", "(", "x", "):", " return", " x"]


def _evidence() -> FeatureEvidence:
    # A feature on Python's `def` and `return` keywords.
    def window(ctx: int) -> Window:
        return Window(CODE, [1.0, 0, 0, 0, 0, 0.8, 0], ctx)

    return FeatureEvidence(0, 1, 0.01, 1.0, [window(c) for c in range(4)],
                           [window(c) for c in range(10, 14)], ["def", " return"])  # fmt: skip


def _pool() -> ScoringPool:
    texts = [f"the weather on day {i} was mild" for i in range(8)] + [
        f"def g{i}(y): return y" for i in range(8)
    ]
    acts = np.zeros((16, 1), np.float32)
    acts[8:, 0] = 1.0
    emb = np.eye(16, 8, dtype=np.float32)
    return ScoringPool(texts, np.arange(16) + 100, acts, emb, "none")


def test_chat_answers_with_logprobs(llama_server):
    client = LLMClient(llama_server, "smollm2-135m")
    answer = client.chat([{"role": "user", "content": "Say hello."}], max_tokens=8, logprobs=True)
    assert answer.text.strip()
    assert answer.tokens and answer.tokens[0].top


def test_llm_explainer_over_http(llama_server):
    explainer = LLMExplainer(LLMClient(llama_server, "smollm2-135m"))
    text = explainer.explain(_evidence())
    assert text and len(text) <= 300 and "<<" not in text
    assert explainer.prompt_version == "explain-v1" and explainer.model == "smollm2-135m"


def test_offline_explainer_adds_a_gloss_when_an_llm_is_configured(llama_server):
    explainer = OfflineExplainer(LLMClient(llama_server, "smollm2-135m"))
    text = explainer.explain(_evidence())
    label = 'fires on "def", "): return"'  # the pair: " return" always follows "):"
    assert text.startswith(label) and "<<" not in text
    assert text.endswith(")") and label_parts(text)["gloss"]  # the LLM's words in brackets
    assert explainer.prompt_version == "offline-v3+gloss-v1"


def test_detection_and_fuzzing_over_http(llama_server):
    client = LLMClient(llama_server, "smollm2-135m")
    for scorer in (DetectionScorer(client, n_each=3), FuzzingScorer(client, n_each=3)):
        score = scorer.score("the Python keywords def and return", _evidence(), _pool())
        assert score.type == scorer.name and 0 <= score.value <= 1
        assert score.n >= 3 and score.scorer_model == "smollm2-135m"
        assert "auroc" in score.details  # llama.cpp returns logprobs
        assert 0 <= score.details["auroc"] <= 1


def test_a_batch_with_the_llm_explainer_and_judges(llama_server):
    llm = {"base_url": llama_server, "model": "smollm2-135m", "api_key": None, "timeout_s": 120}
    job = _Job("llm", ["detection", "fuzzing"], llm, seed=0)
    (outcome,) = explain_batch(job, [_evidence()], _pool())
    # Either whole (text + both scores) or failed with the reason; never half.
    if outcome.error is None:
        assert outcome.text and {s.type for s in outcome.scores} == {"detection", "fuzzing"}
    else:
        assert outcome.error.split(":")[0] in ("explainer", "detection", "fuzzing")
