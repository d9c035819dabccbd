"""Labels over HTTP: keys and scopes, validation, history and the current-label rule."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from problems import bearer, problem_of
from sqlalchemy import select

from saefeat.api.app import create_app
from saefeat.storage.catalog.models import API_SCOPES, ApiKey

URL = "/v1/saes/sae-a/features/3/labels"


def test_without_a_key_is_401_with_a_bearer_challenge(client, catalog):
    body = problem_of(client.post(URL, json={"text": "dogs"}), 401)
    assert "Authorization: Bearer" in body["detail"]
    assert client.post(URL, json={"text": "dogs"}).headers["www-authenticate"].startswith("Bearer")
    # A non-Bearer scheme is no key at all.
    assert (
        client.post(URL, json={"text": "dogs"}, headers={"Authorization": "Basic eDp5"}).status_code
        == 401
    )


@pytest.mark.parametrize("which", ["unknown", "revoked"])
def test_an_unknown_or_revoked_key_is_401(client, catalog, keys, which):
    key = "sfk_" + "x" * 32 if which == "unknown" else keys["revoked"]
    response = client.post(URL, json={"text": "dogs"}, headers=bearer(key))
    body = problem_of(response, 401)
    assert "unknown or revoked" in body["detail"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_key_without_the_label_scope_is_403(client, catalog, keys):
    body = problem_of(client.post(URL, json={"text": "dogs"}, headers=bearer(keys["read"])), 403)
    assert '"label"' in body["detail"] and "reader" in body["detail"]


def test_auth_is_checked_before_the_body(client, catalog):
    assert client.post(URL, json={"text": ""}).status_code == 401


def test_a_label_key_adds_a_label(client, catalog, keys):
    response = client.post(URL, json={"text": "  Python keywords  "}, headers=bearer(keys["label"]))
    assert response.status_code == 201, response.text
    label = response.json()
    assert label["text"] == "Python keywords"  # trimmed
    assert label["source"] == "human" and label["score"] is None
    assert label["author"] == "labeller"  # always the key's name
    assert client.get("/v1/saes/sae-a/features/3").json()["label"] == label
    listed = client.get("/v1/saes/sae-a/features?limit=500").json()["items"]
    assert [f["label"] for f in listed if f["index"] == 3] == ["Python keywords"]


def test_admin_keys_can_label(client, catalog, keys):
    response = client.post(URL, json={"text": "x"}, headers=bearer(keys["admin"]))
    assert response.status_code == 201 and response.json()["author"] == "admin"


def test_provenance_cannot_be_forged(client, catalog, keys):
    """The author is the key's name, and auto labels and scores need "explain"."""
    label = bearer(keys["label"])
    problem = problem_of(
        client.post(URL, json={"text": "x", "author": "admin"}, headers=label), 422
    )
    assert [e["field"] for e in problem["errors"]] == ["author"]
    for body in ({"text": "x", "source": "auto"}, {"text": "x", "score": 0.5},
                 {"text": "x", "source": "auto", "score": 0.5}):  # fmt: skip
        problem = problem_of(client.post(URL, json=body, headers=label), 403)
        assert '"explain"' in problem["detail"]
    assert client.get(URL).json()["items"] == []  # nothing was stored
    made = client.post(
        URL, json={"text": "x", "source": "auto", "score": 0.7}, headers=bearer(keys["explain"])
    )
    assert made.status_code == 201, made.text
    assert made.json() | {"id": 0, "created_at": 0} == {
        "id": 0, "text": "x", "source": "auto", "author": "explainer", "score": 0.7,
        "created_at": 0, "votes_up": 0, "votes_down": 0,
    }  # fmt: skip


@pytest.mark.parametrize("text", ["a\x00b", "lone \ud800"])
def test_label_text_the_database_cannot_hold_is_422(client, catalog, keys, text):
    headers = bearer(keys["label"]) | {"Content-Type": "application/json"}
    raw = json.dumps({"text": text}).encode()  # JSON escapes both
    problem = problem_of(client.post(URL, content=raw, headers=headers), 422)
    assert problem["errors"][0]["field"] == "text"
    assert client.get(URL).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   "}, "text"),
        ({"text": "x" * 501}, "text"),
        ({"text": "ok", "source": "robot"}, "source"),
        ({"text": "ok", "score": "high"}, "score"),
        ({"text": "ok", "colour": "red"}, "colour"),
    ],
)
def test_bad_label_bodies_are_422_naming_the_field(client, catalog, keys, body, field):
    problem = problem_of(client.post(URL, json=body, headers=bearer(keys["label"])), 422)
    assert [e["field"] for e in problem["errors"]] == [field]
    assert problem["errors"][0]["location"] == "body"


def test_malformed_json_is_422(client, catalog, keys):
    headers = bearer(keys["label"]) | {"Content-Type": "application/json"}
    problem = problem_of(client.post(URL, content=b"{not json", headers=headers), 422)
    assert problem["errors"][0]["field"] == "body"


def test_labelling_an_unknown_feature_is_404(client, catalog, keys):
    headers = bearer(keys["label"])
    problem_of(
        client.post("/v1/saes/sae-b/features/8/labels", json={"text": "x"}, headers=headers), 404
    )
    problem_of(
        client.post("/v1/saes/nope/features/0/labels", json={"text": "x"}, headers=headers), 404
    )


def test_history_is_kept_and_the_current_label_follows_the_rule(client, catalog, keys):
    headers = bearer(keys["explain"])  # auto labels come from the explainer

    def post(**body):
        response = client.post(URL, json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def current():
        return client.get(URL).json()["current"]

    assert client.get(URL).json() == {"items": [], "current": None, "next_cursor": None}
    weak = post(text="auto weak", source="auto", score=0.2)
    strong = post(text="auto strong", source="auto", score=0.8)
    post(text="auto newer but weaker", source="auto", score=0.5)
    post(text="auto unscored", source="auto")
    assert current()["id"] == strong
    first_human = post(text="human one")
    assert current()["id"] == first_human
    post(text="auto best ever", source="auto", score=0.99)
    assert current()["id"] == first_human  # a person's label beats any auto label
    second_human = post(text="human two")
    history = client.get(URL).json()["items"]
    assert history[0]["id"] == second_human and history[-1]["id"] == weak
    assert len(history) == 7
    assert [h["created_at"] for h in history] == sorted(
        (h["created_at"] for h in history), reverse=True
    )
    assert client.get("/v1/saes/sae-a/features/3").json()["label"]["text"] == "human two"


def test_bootstrap_key_is_created_with_every_scope(make_settings, catalog, db):
    settings = make_settings(bootstrap_api_key="operator-secret")
    with TestClient(create_app(settings)) as client:
        response = client.post(URL, json={"text": "x"}, headers=bearer("operator-secret"))
        assert response.status_code == 201
    with TestClient(create_app(settings)) as client:  # a restart does not duplicate it
        assert (
            client.post(URL, json={"text": "y"}, headers=bearer("operator-secret")).status_code
            == 201
        )
    keys = db.scalars(select(ApiKey).where(ApiKey.name == "bootstrap")).all()
    assert len(keys) == 1 and keys[0].scopes == list(API_SCOPES)


def test_require_read_key_guards_reads(make_settings, catalog, keys):
    with TestClient(create_app(make_settings(require_read_key=True))) as client:
        assert client.get("/v1/health").status_code == 200  # probes need no key
        problem_of(client.get("/v1/saes"), 401)
        problem_of(client.get("/v1/saes/sae-a/features", headers=bearer(keys["label"])), 403)
        assert client.get("/v1/saes", headers=bearer(keys["read"])).status_code == 200
        assert client.get(URL, headers=bearer(keys["admin"])).status_code == 200
        # Writing needs "label", not "read" as well.
        assert (
            client.post(URL, json={"text": "x"}, headers=bearer(keys["label"])).status_code == 201
        )
