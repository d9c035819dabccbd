"""NUL characters over HTTP on both databases: PostgreSQL text cannot hold one, so each
is refused (422) before it reaches the driver; SQLite answers the same."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from synthetic_catalog import synthetic_feature_index

from saefeat.api.app import create_app
from saefeat.config import Settings
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.writer import write_feature_index


@pytest.fixture
def client(db_url, session, make_sae, tmp_path):
    sae = make_sae(session, d_sae=8)
    write_feature_index(session, sae.id, synthetic_feature_index(8, seed=1))
    key = create_api_key(session, "labeller", ["label"])
    session.commit()
    app = create_app(Settings(home=tmp_path, database_url=db_url))
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client
    app.state.engine.dispose()


def test_a_nul_in_a_label_is_422_and_nothing_is_stored(client):
    url = "/v1/saes/sae-a/features/1/labels"
    raw = json.dumps({"text": "before\x00after"}).encode()
    response = client.post(url, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "text"
    assert client.get(url).json()["items"] == []


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/saes/a%00b", "path"),
        ("/v1/saes/a%00b/features/1", "path"),
        ("/v1/features/search?token=a%00b", "token"),
        ("/v1/labels/search?q=x&sae_id=a%00b", "sae_id"),
        ("/v1/jobs/a%00b", "path"),
    ],
)
def test_a_nul_in_a_parameter_is_422_naming_it(client, url, field):
    response = client.get(url)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field
