"""OpenAPI is complete: every status a route answers is declared, errors as problem+json."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from saefeat.api.app import create_app

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
# POST routes that only read (open unless reads need a key).
READ_POSTS = {"/v1/saes/{sae_id}/activations", "/v1/saes/{sae_id}/steer"}
# Routes that take an optional key (it must be valid when sent; settings may require it).
OPTIONAL_KEY = {"/v1/saes/{sae_id}/activations", "/v1/saes/{sae_id}/steer"}


def _operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_docs_and_schema_are_served(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    # The catalog's routes (job routes live beside them, tested with the jobs).
    assert {p for p, _, _ in _operations(schema)} >= {
        "/v1/health",
        "/v1/saes",
        "/v1/saes/{sae_id}",
        "/v1/saes/{sae_id}/features",
        "/v1/saes/{sae_id}/features/{index}",
        "/v1/saes/{sae_id}/features/{index}/labels",
        "/v1/features/search",
        "/v1/saes/{sae_id}/features/{index}/neighbours",
        "/v1/labels/search",
        "/v1/labels/{label_id}/votes",
        "/v1/saes/{sae_id}/activations",
    }


@pytest.mark.parametrize("require_read_key", [False, True])
def test_every_error_response_is_declared_as_problem_json(make_settings, require_read_key):
    app = create_app(make_settings(require_read_key=require_read_key))
    schema = TestClient(app).get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, method, operation in _operations(schema):
        statuses = set(operation["responses"])
        for status, response in operation["responses"].items():
            if status[0] in "45":
                assert response["content"] == {"application/problem+json": {"schema": PROBLEM_REF}}
        has_params = bool(operation.get("parameters") or operation.get("requestBody"))
        assert ("422" in statuses) == has_params, (method, path)
        writes = method == "post" and path not in READ_POSTS
        guarded = writes or path in OPTIONAL_KEY or (require_read_key and path != "/v1/health")
        assert ({"401", "403"} <= statuses) == guarded, (method, path)
        if guarded:
            assert operation["security"] == [{"ApiKey": []}]
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
        if "{" in path:
            assert "404" in statuses, (method, path)
        if "requestBody" in operation:
            assert "413" in statuses, (method, path)  # the body limit
        if any(p["name"] == "cursor" for p in operation.get("parameters", ())):
            assert "400" in statuses, (method, path)  # a cursor the server did not sign
    scheme = schema["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "http", "scheme": "bearer", "description": scheme["description"]}


def test_answers_only_use_declared_statuses(client, catalog, keys):
    """A small schemathesis: every status seen here is declared for its operation."""
    schema = client.get("/openapi.json").json()
    label_url = "/v1/saes/sae-a/features/1/labels"

    def auth(key: str) -> dict:
        return {"Authorization": f"Bearer {key}"}

    requests = [
        ("get", "/v1/health", {}),
        ("get", "/v1/saes?limit=0", {}),
        ("get", "/v1/saes/nope", {}),
        ("get", "/v1/saes/sae-a/features?cursor=zz", {}),
        ("get", "/v1/saes/sae-a/features/999", {}),
        ("get", "/v1/saes/sae-a/features/-1", {}),
        ("get", label_url, {}),
        ("get", "/v1/features/search?token=cat&sae_id=nope", {}),
        ("post", label_url, {"json": {"text": "x"}}),
        ("post", label_url, {"json": {}, "headers": auth("x")}),
        ("post", label_url, {"json": {"text": "x"}, "headers": auth(keys["read"])}),
        ("post", label_url, {"json": {"text": ""}, "headers": auth(keys["label"])}),
        ("post", label_url, {"json": {"text": "x"}, "headers": auth(keys["label"])}),
        ("get", "/v1/labels/search?q=%22open", {}),
        ("get", "/v1/labels/search?q=x", {}),
        ("get", "/v1/labels/search?q=x&sae_id=nope", {}),
        ("get", "/v1/saes/sae-a/features/3/neighbours", {}),
        ("get", "/v1/saes/sae-a/features/999/neighbours", {}),
        ("post", "/v1/labels/1/votes", {"json": {"vote": "up"}}),
        ("post", "/v1/labels/999/votes", {"json": {"vote": "up"}, "headers": auth(keys["label"])}),
        (
            "post",
            "/v1/labels/1/votes",
            {"json": {"vote": "sideways"}, "headers": auth(keys["label"])},
        ),
        ("post", "/v1/saes/sae-a/activations", {"json": {"text": "x" * 5000}}),
        ("post", "/v1/saes/nope/activations", {"json": {"text": "x"}}),
        ("post", "/v1/saes/sae-a/activations", {"json": {"text": ""}}),
    ]
    templates = [
        (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in schema["paths"]
    ]
    for method, url, kwargs in requests:
        response = client.request(method, url, **kwargs)
        path = url.split("?")[0]
        template = next(t for rx, t in templates if rx.match(path))
        declared = schema["paths"][template][method]["responses"]
        assert str(response.status_code) in declared, (method, url, response.status_code)
