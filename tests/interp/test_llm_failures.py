"""An unreachable endpoint or one that answers garbage: a clear error per feature, the
batch goes on, and nothing of a failed feature is kept."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from saefeat.interp.evidence import FeatureEvidence, Window
from saefeat.interp.judge import DetectionScorer
from saefeat.interp.llm import LLMClient, LLMError
from saefeat.interp.pool import ScoringPool
from saefeat.workers.explain import _Job, explain_batch
from tests.ports import free_port


class _Nonsense(BaseHTTPRequestHandler):
    """Answers every POST with HTTP 200 and a body that is no chat completion; the path
    /bad/v1/... answers JSON without `choices`, /down/v1/... a 503."""

    def do_POST(self):  # noqa: N802 - the http.server API
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path.startswith("/bad/"):
            status, body = 200, b'{"object": "chat.completion", "choices": []}'
        elif self.path.startswith("/down/"):
            status, body = 503, b"overloaded"
        else:
            status, body = 200, b"<html>definitely not json</html>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def nonsense_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Nonsense)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_unreachable_endpoint_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    client = LLMClient(url, "m", timeout_s=5)
    with pytest.raises(LLMError, match=r"cannot reach the LLM endpoint http://127\.0\.0\.1:\d+/v1"):
        client.chat([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("", "not a chat completion: '<html>definitely not json"),
        ("/bad", "not a chat completion"),
        ("/down", "answered HTTP 503: 'overloaded'"),
    ],
)
def test_garbage_answers_are_llm_errors(nonsense_url, prefix, message):
    client = LLMClient(f"{nonsense_url}{prefix}/v1", "m", timeout_s=5)
    with pytest.raises(LLMError, match=message):
        client.chat([{"role": "user", "content": "hi"}])


def _evidence(index: int) -> FeatureEvidence:
    windows = [Window(["a", " b", " c"], [0.0, 1.0, 0.0], c) for c in range(3)]
    held = [Window(["x", " b", " y"], [0.0, 0.5, 0.0], 10 + c) for c in range(3)]
    return FeatureEvidence(index, 100 + index, 0.1, 1.0, windows, held, [" b"])


def _pool(d_sae: int = 4, n: int = 12) -> ScoringPool:
    rng = np.random.default_rng(0)
    acts = np.zeros((n, d_sae), np.float32)
    acts[: n // 2] = 1.0
    emb = rng.normal(size=(n, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return ScoringPool([f"text {i}" for i in range(n)], np.arange(n) + 100, acts, emb, "none")


@pytest.mark.parametrize("where", ["garbage", "unreachable"])
def test_a_failing_endpoint_fails_each_feature_and_the_batch_goes_on(nonsense_url, where):
    base = nonsense_url + "/v1" if where == "garbage" else f"http://127.0.0.1:{free_port()}/v1"
    llm = {"base_url": base, "model": "m", "api_key": None, "timeout_s": 5.0}
    expected = "not a chat completion" if where == "garbage" else "cannot reach"
    # The offline explainer asks the configured LLM for its bracketed gloss.
    for explainer in ("llm", "offline"):
        job = _Job(explainer, ["detection"], llm, seed=0)
        outcomes = explain_batch(job, [_evidence(0), _evidence(1)], _pool())
        assert [o.index for o in outcomes] == [0, 1]
        for o in outcomes:
            assert o.error.startswith("explainer: ") and expected in o.error
            assert o.text is None and o.scores == []
    # A judge that cannot answer fails the scorer, named in the feature's error.
    judge = DetectionScorer(LLMClient(base, "m", timeout_s=5))
    with pytest.raises(LLMError, match=expected):
        judge.score("the token b", _evidence(0), _pool())
