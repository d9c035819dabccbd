"""Read routes: SAEs, feature lists with filters and cursors, feature detail, search."""

from __future__ import annotations

from dataclasses import asdict

import pytest
from problems import problem_of

from saefeat.api.schemas import FeatureDetail


def _walk(client, url: str, params: dict) -> list[dict]:
    items, cursor = [], None
    for _ in range(1000):
        response = client.get(url, params=params | ({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= params.get("limit", 50)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination never ended")


def test_health(client):
    from alembic.script import ScriptDirectory

    from saefeat.storage.catalog.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    response = client.get("/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": "0.1.0", "schema_revision": head}


def test_list_and_get_saes(client, catalog):
    items = client.get("/v1/saes").json()["items"]
    assert [s["id"] for s in items] == ["sae-a", "sae-b"]
    assert items[0] | {"created_at": None} == {
        "id": "sae-a",
        "name": "SmolLM2 L6 sae-a",
        "model": "SmolLM2-135M-Instruct",
        "hook": "blocks.6.hook_resid_post",
        "hook_out": None,
        "kind": "sae",
        "sources": None,
        "architecture": "topk",
        "d_in": 576,
        "d_sae": 57,
        "k": 8,
        "metrics": {"fvu": 0.21, "l0": 8.0},
        "created_at": None,
    }
    assert [s["id"] for s in _walk(client, "/v1/saes", {"limit": 1})] == ["sae-a", "sae-b"]
    detail = client.get("/v1/saes/sae-b").json()
    assert detail["n_features_indexed"] == 8 and detail["cfg"] == {"k": 8}
    assert detail["created_at"].endswith(("Z", "+00:00"))


def test_unknown_sae_is_404problem_of(client, catalog):
    for url in (
        "/v1/saes/nope",
        "/v1/saes/nope/features",
        "/v1/saes/nope/features/0",
        "/v1/saes/nope/features/0/labels",
        "/v1/features/search?token=cat&sae_id=nope",
    ):
        body = problem_of(client.get(url), 404)
        assert "nope" in body["detail"] and "GET /v1/saes" in body["detail"], url


def test_unknown_feature_index_is_404_with_the_valid_range(client, catalog):
    body = problem_of(client.get("/v1/saes/sae-b/features/8"), 404)
    assert "0..7" in body["detail"]


@pytest.mark.parametrize("sort", ["max_activation", "density"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_feature_pages_cover_every_feature_once_in_order(client, catalog, sort, order):
    index = catalog.indexes["sae-a"]
    params = {"sort": sort, "order": order, "limit": 5, "min_density": 0.0001}
    got = _walk(client, "/v1/saes/sae-a/features", params)
    keep = [i for i in range(index.d_sae) if index.density[i] >= 0.0001]
    sign = -1 if order == "desc" else 1
    values = getattr(index, sort)
    assert [f["index"] for f in got] == sorted(keep, key=lambda i: (sign * values[i], i))
    assert all(f["sae_id"] == "sae-a" and f["label"] is None for f in got)


def test_feature_list_defaults_and_density_window(client, catalog):
    index = catalog.indexes["sae-a"]
    page = client.get("/v1/saes/sae-a/features").json()
    assert len(page["items"]) == 50 and page["next_cursor"]
    maxes = [f["max_activation"] for f in page["items"]]
    assert maxes == sorted(maxes, reverse=True)  # default: max_activation, desc
    window = _walk(client, "/v1/saes/sae-a/features", {"min_density": 0.01, "max_density": 0.05})
    expected = {i for i in range(index.d_sae) if 0.01 <= index.density[i] <= 0.05}
    assert {f["index"] for f in window} == expected and expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("sort=index", "sort"),
        ("order=up", "order"),
        ("min_density=2", "min_density"),
        ("min_density=0.5&max_density=0.1", "min_density"),
    ],
)
def test_bad_list_parameters_are_422_naming_the_field(client, catalog, query, field):
    body = problem_of(client.get(f"/v1/saes/sae-a/features?{query}"), 422)
    assert [e["field"] for e in body["errors"]] == [field]
    assert field in body["detail"]


@pytest.mark.parametrize(
    "cursor",
    ["not-a-cursor", "eyJvIjoiZGVuc2l0eTpkZXNjIiwiayI6WyJhIiwxXX0", "%%%"],
)
def test_a_cursor_this_server_did_not_make_is_400_naming_it(client, catalog, cursor):
    for url in ("/v1/saes/sae-a/features", "/v1/features/search?token=cat"):
        sep = "&" if "?" in url else "?"
        body = problem_of(client.get(f"{url}{sep}cursor={cursor}"), 400)
        assert [e["field"] for e in body["errors"]] == ["cursor"]


def test_a_cursor_from_another_sort_is_refused(client, catalog):
    cursor = client.get("/v1/saes/sae-a/features?sort=density&limit=2").json()["next_cursor"]
    body = problem_of(client.get(f"/v1/saes/sae-a/features?cursor={cursor}"), 400)
    assert "density:desc" in body["detail"]


def test_feature_detail(client, catalog):
    index = catalog.indexes["sae-a"]
    f = next(i for i in range(index.d_sae) if index.density[i] > 0)
    response = client.get(f"/v1/saes/sae-a/features/{f}")
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    FeatureDetail.model_validate(body)  # the body is built without the model: check it fits
    assert body["index"] == f and body["label"] is None
    assert body["density"] == pytest.approx(index.density[f])
    assert body["histogram"]["counts"] == index.histograms[f].tolist()
    examples = body["examples"]
    assert [(e["kind"], e["rank"]) for e in examples] == [
        ("top", 0), ("top", 1), ("top", 2), ("top", 3), ("quantile", 0), ("quantile", 1)
    ]  # fmt: skip
    given = next(e for e in index.examples if e.feature_index == f and e.kind == "top")
    assert examples[0] == asdict(given)  # the record the index writer took, as it was
    projection = index.projections[f]
    assert [t["token"] for t in body["projection"]["top"]] == projection.top_strs
    assert [t["value"] for t in body["projection"]["bottom"]] == projection.bottom_values
    assert [t["rank"] for t in body["projection"]["top"]] == list(range(8))


def test_search_by_token(client, catalog):
    index = catalog.indexes["sae-a"]
    word = "python"
    spellings = {"python", " python", "Ġpython", "▁python"}
    expected = {
        ("sae-a", p.feature_index) for p in index.projections if spellings & set(p.top_strs)
    } | {
        ("sae-b", p.feature_index)
        for p in catalog.indexes["sae-b"].projections
        if spellings & set(p.top_strs)
    }
    assert expected
    for query in (word, "Ġ" + word):
        got = _walk(client, "/v1/features/search", {"token": query, "limit": 2})
        assert {(m["sae_id"], m["index"]) for m in got} == expected
        assert len(got) == len(expected)
        assert all(m["token"] in spellings for m in got)
        values = [m["value"] for m in got]
        assert values == sorted(values, reverse=True)
    only_a = _walk(client, "/v1/features/search", {"token": word, "sae_id": "sae-a"})
    assert {m["sae_id"] for m in only_a} == {"sae-a"}
    exact = _walk(client, "/v1/features/search", {"token": "Ġ" + word, "exact": "true"})
    assert {m["token"] for m in exact} <= {"Ġ" + word}
    bottom = _walk(client, "/v1/features/search", {"token": word, "side": "bottom"})
    assert all(m["value"] < 0 for m in bottom)


def test_search_validation(client, catalog):
    assert problem_of(client.get("/v1/features/search"), 422)["errors"][0]["field"] == "token"
    assert (
        problem_of(client.get("/v1/features/search?token="), 422)["errors"][0]["field"] == "token"
    )
    body = problem_of(client.get("/v1/features/search?token=cat&side=left"), 422)
    assert body["errors"][0]["field"] == "side"
    body = problem_of(client.get("/v1/features/search?token=cat&cursor=%%%"), 400)
    assert body["errors"][0]["field"] == "cursor"


def test_unknown_route_is_a_problem_too(client):
    body = problem_of(client.get("/v2/nothing"), 404)
    assert "/docs" in body["detail"]
