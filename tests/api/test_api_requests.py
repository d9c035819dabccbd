"""Every request is bounded: body sizes, the live search pool and rate limit, inputs that
once gave 500s."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from problems import bearer, problem_of
from synthetic_catalog import register_test_sae

from saefeat.api.app import create_app
from saefeat.features import live

LABEL_URL = "/v1/saes/sae-a/features/3/labels"
LIVE_URL = "/v1/saes/live/activations"


def _post_endless_body(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """POST an endless body (1 KiB chunks, never the last) to the ASGI app: the status it
    answers and how many body bytes it read to get there."""
    chunks = itertools.repeat(b"x" * 1024)
    read = 0

    async def receive() -> dict:
        nonlocal read
        chunk = next(chunks)
        read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], read


def test_an_anonymous_200_mb_label_is_refused_unread(app, catalog):
    limit = app.state.settings.label_body_bytes
    declared = [(b"content-length", str(200 * 1024 * 1024).encode())]
    assert _post_endless_body(app, LABEL_URL, declared) == (413, 0)
    # Chunked (no Content-Length): counted as it arrives, refused just past the limit.
    status, read = _post_endless_body(app, LABEL_URL, [])
    assert status == 413 and limit < read <= limit + 1024


def test_each_route_has_its_own_body_limit(make_settings, catalog, keys):
    app = create_app(make_settings(label_body_bytes=1000, live_body_bytes=2000, body_bytes=3000))
    with TestClient(app) as client:
        for url, limit in [
            (LABEL_URL, 1000),
            ("/v1/labels/1/votes", 1000),
            ("/v1/saes/sae-a/activations", 2000),
            ("/v1/harvests", 3000),
        ]:
            body = b'{"text": "' + b"a" * limit + b'"}'
            problem = problem_of(client.post(url, content=body, headers=bearer(keys["admin"])), 413)
            assert f"at most {limit} bytes" in problem["detail"], url
            assert problem["errors"][0]["field"] == "body"


def test_the_longest_valid_label_fits_the_default_limit(client, catalog, keys):
    # 500 astral characters, each escaped as a surrogate pair by json.dumps: 12 bytes each.
    body = json.dumps({"text": "\U0001f600" * 500}).encode()
    assert len(body) > 6000
    headers = bearer(keys["label"]) | {"Content-Type": "application/json"}
    assert client.post(LABEL_URL, content=body, headers=headers).status_code == 201


@pytest.fixture
def live_sae(db):
    """An SAE with a checkpoint path: live requests get as far as the model."""
    where = {"model_name": "some-model", "hook_name": "blocks.1.hook_resid_post", "d_in": 64}
    register_test_sae(db, "live", 96, name="live", k=4, checkpoint_path="/nowhere/sae", **where)
    db.commit()


def test_a_saturated_live_pool_answers_503_and_health_still_answers(
    make_settings, live_sae, monkeypatch
):
    """More live requests than the server has request threads: the pool takes two, the
    rest are refused at once, and the health probe is served while the two are stuck."""
    release, running = threading.Event(), threading.Semaphore(0)

    def stuck_forward(*args) -> list:
        running.release()
        release.wait(120)
        return []

    monkeypatch.setattr(live, "features_for_sae", stuck_forward)
    settings = make_settings(live_workers=1, live_queue=1, live_burst=1000)
    n = 45  # above the 40 threads the server runs sync routes on
    with TestClient(create_app(settings)) as client, ThreadPoolExecutor(n) as threads:
        answers = [threads.submit(client.post, LIVE_URL, json={"text": "hi"}) for _ in range(n)]
        assert running.acquire(timeout=120)  # one forward is running
        deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
        while sum(a.done() for a in answers) < n - 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = [a.result() for a in answers if a.done()]
        assert len(refused) == n - 2
        for response in refused:
            assert "all 2 live search slots" in problem_of(response, 503)["detail"]
            assert response.headers["retry-after"] == "1"
        health = threads.submit(client.get, "/v1/health")  # while the two are stuck
        assert health.result(timeout=120).status_code == 200
        assert client.app.state.live_pool.in_flight == 2
        release.set()
        assert sorted(a.result().status_code for a in answers) == [200] * 2 + [503] * (n - 2)


def test_live_search_is_rate_limited_per_client(make_settings, catalog, keys):
    settings = make_settings(live_rate_per_minute=0.01, live_burst=2)
    url = "/v1/saes/sae-a/activations"  # no checkpoint: 422 once past the limit
    with TestClient(create_app(settings)) as client:
        assert [client.post(url, json={"text": "hi"}).status_code for _ in range(2)] == [422] * 2
        response = client.post(url, json={"text": "hi"})
        problem_of(response, 429)
        assert int(response.headers["retry-after"]) > 1000  # 100 minutes per token
        # A key is a client of its own; an unknown key is refused, not counted.
        assert client.post(url, json={"text": "hi"}, headers=bearer(keys["read"])).status_code == (
            422
        )
        problem_of(client.post(url, json={"text": "hi"}, headers=bearer("sfk_unknown")), 401)


def test_label_writes_are_rate_limited_per_key(make_settings, catalog, keys):
    settings = make_settings(label_rate_per_minute=0.01, label_burst=2)
    with TestClient(create_app(settings)) as client:
        label = bearer(keys["label"])
        made = [client.post(LABEL_URL, json={"text": f"t{i}"}, headers=label) for i in range(2)]
        assert [r.status_code for r in made] == [201, 201]
        response = client.post(LABEL_URL, json={"text": "one too many"}, headers=label)
        problem_of(response, 429)
        assert int(response.headers["retry-after"]) > 1000  # 100 minutes per token
        # Votes spend the same key's bucket; another key has its own.
        vote = f"/v1/labels/{made[0].json()['id']}/votes"
        problem_of(client.post(vote, json={"vote": "up"}, headers=label), 429)
        other = client.post(vote, json={"vote": "up"}, headers=bearer(keys["explain"]))
        assert other.status_code == 200, other.text
        history = client.get("/v1/saes/sae-a/features/3/labels").json()
        assert "one too many" not in [item["text"] for item in history["items"]]


def test_live_search_can_require_a_read_key(make_settings, catalog, keys):
    url = "/v1/saes/sae-a/activations"
    with TestClient(create_app(make_settings(live_requires_key=True))) as client:
        problem_of(client.post(url, json={"text": "hi"}), 401)
        problem_of(client.post(url, json={"text": "hi"}, headers=bearer(keys["label"])), 403)
        assert client.post(url, json={"text": "hi"}, headers=bearer(keys["read"])).status_code == (
            422
        )


FEATURE_ROUTES = [
    ("get", "/v1/saes/sae-a/features/{i}"),
    ("get", "/v1/saes/sae-a/features/{i}/labels"),
    ("get", "/v1/saes/sae-a/features/{i}/neighbours"),
    ("post", "/v1/saes/sae-a/features/{i}/labels"),
    ("post", "/v1/labels/{i}/votes"),
]


@pytest.mark.parametrize("index", [2**63, 2**64, -1, -(2**63) - 1])
@pytest.mark.parametrize(("method", "route"), FEATURE_ROUTES)
def test_out_of_range_indices_and_ids_are_422(client, catalog, keys, method, route, index):
    body = {"text": "x"} if route.endswith("labels") else {"vote": "up"}
    kwargs = {"json": body, "headers": bearer(keys["label"])} if method == "post" else {}
    problem = problem_of(client.request(method, route.format(i=index), **kwargs), 422)
    assert problem["errors"][0]["location"] == "path"


@pytest.mark.parametrize(
    "url",
    ["/v1/saes", "/v1/saes/sae-a/features", "/v1/labels/search?q=x", "/v1/jobs"],
)
@pytest.mark.parametrize(
    "key",
    [[10**30], ["2026-13-45T99:00:00", "job"], ["not a date", "x"], [-1]],
)
def test_forged_cursors_are_400(client, catalog, url, key):
    """A cursor holding 10^30 or a date that is not one: refused, unread (unsigned)."""
    import base64

    raw = json.dumps({"o": "labels:newest", "k": key}).encode()
    forged = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    sep = "&" if "?" in url else "?"
    for cursor in (forged, forged + ".AAAAAAAAAAAAAAAAAAAAAA"):
        problem = problem_of(client.get(f"{url}{sep}cursor={cursor}"), 400)
        assert problem["errors"][0]["field"] == "cursor"


def test_text_that_tokenizes_to_nothing_is_422(client, live_sae, monkeypatch):
    """SmolLM2's tokenizer drops "\\u0006" entirely: no tokens, nothing to run."""
    from transformers import AutoTokenizer

    from saefeat.lm import LanguageModel, embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    lm = LanguageModel("smollm2-135m", None, tokenizer, None, False)  # type: ignore[arg-type]

    def tokenize_only(model_name, revision, checkpoint, hook, text, top_n):
        return live.features_on_text(lm, None, hook, text, top_n)  # type: ignore[arg-type]

    monkeypatch.setattr(live, "features_for_sae", tokenize_only)
    problem = problem_of(client.post(LIVE_URL, json={"text": "\u0006"}), 422)
    assert "has no tokens" in problem["detail"] and problem["errors"][0]["field"] == "text"


def test_live_text_with_a_lone_surrogate_is_422(client, live_sae):
    raw = json.dumps({"text": "a \ud800"}).encode()
    response = client.post(LIVE_URL, content=raw, headers={"Content-Type": "application/json"})
    assert problem_of(response, 422)["errors"][0]["field"] == "text"
