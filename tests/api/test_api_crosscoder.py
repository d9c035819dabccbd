"""A crosscoder over HTTP, on a synthetic catalog: feature bodies carry decoder norms,
relative norm and class (null for an SAE); the features list filters by class and sorts
by relative norm (422 naming the parameter for another SAE or another value); the SAE
page names the sources and sorts and filters the same way; the feature page shows the
norms; live encoding and steering refuse it naming `sae_id`."""

from __future__ import annotations

import re

import pytest
from problems import problem_of
from synthetic_crosscoder import register_crosscoder

from saefeat.sae.crosscoder import SHARING
from saefeat.storage.catalog.queries import SHARING_CLASSES

D_SAE = 40


@pytest.fixture
def crosscoder(db, catalog):
    """The seeded catalog (plain SAEs sae-a, sae-b) and the crosscoder sae-x's index."""
    return register_crosscoder(db, "sae-x", D_SAE)


def _field(response, status: int = 422) -> str:
    return problem_of(response, status)["errors"][0]["field"]


def test_the_catalog_knows_the_classes_the_crosscoder_module_names():
    assert SHARING_CLASSES == SHARING


def test_feature_bodies_carry_norms_relative_norm_and_class(client, crosscoder):
    body = client.get("/v1/saes/sae-x/features/5").json()
    assert body["decoder_norms"] == pytest.approx(crosscoder.decoder_norms[5].tolist())
    assert body["relative_norm"] == pytest.approx(crosscoder.relative_norms[5])
    assert body["sharing"] == crosscoder.sharing[5]
    item = client.get("/v1/saes/sae-x/features", params={"limit": 1}).json()["items"][0]
    assert item["sharing"] == crosscoder.sharing[item["index"]]
    assert len(item["decoder_norms"]) == 2
    plain = client.get("/v1/saes/sae-a/features/1").json()
    assert (plain["decoder_norms"], plain["relative_norm"], plain["sharing"]) == (None, None, None)
    summary = client.get("/v1/saes/sae-x").json()
    assert summary["kind"] == "crosscoder" and [s["model"] for s in summary["sources"]] == [
        "model-a", "model-b"]  # fmt: skip


def test_the_list_filters_by_class_and_sorts_by_relative_norm(client, crosscoder):
    for cls in ("a_only", "shared", "b_only"):
        items = client.get("/v1/saes/sae-x/features", params={
            "sharing": cls, "limit": 500, "artifacts": "include"}).json()["items"]  # fmt: skip
        assert {i["index"] for i in items} == {
            i for i, c in enumerate(crosscoder.sharing) if c == cls}  # fmt: skip
    for order, sign in (("asc", 1), ("desc", -1)):
        seen, cursor = [], None
        while True:
            params = {"sort": "relative_norm", "order": order, "limit": 9, "artifacts": "include"}
            page = client.get("/v1/saes/sae-x/features",
                              params=params | ({"cursor": cursor} if cursor else {}))  # fmt: skip
            assert page.status_code == 200, page.text
            seen += [i["index"] for i in page.json()["items"]]
            if not (cursor := page.json()["next_cursor"]):
                break
        rel = crosscoder.relative_norms
        assert seen == sorted(range(D_SAE), key=lambda i: (sign * rel[i], i))


def test_the_list_refuses_other_classes_and_saes_naming_the_parameter(client, crosscoder):
    url = "/v1/saes/{}/features"
    assert _field(client.get(url.format("sae-x"), params={"sharing": "a"})) == "sharing"
    assert _field(client.get(url.format("sae-x"), params={"sort": "norm"})) == "sort"
    assert _field(client.get(url.format("sae-a"), params={"sort": "relative_norm"})) == "sort"
    refused = client.get(url.format("sae-a"), params={"sharing": "shared"})
    assert _field(refused) == "sharing" and "not a crosscoder" in refused.json()["detail"]
    assert problem_of(client.get(url.format("nope"), params={"sharing": "shared"}), 404)


def test_openapi_declares_the_new_parameters(client):
    schema = client.get("/openapi.json").json()
    params = {p["name"]: p for p in schema["paths"]["/v1/saes/{sae_id}/features"]["get"][
        "parameters"]}  # fmt: skip
    assert "sharing" in params and "relative_norm" in str(params["sort"]["schema"])
    assert "422" in schema["paths"]["/v1/saes/{sae_id}/features"]["get"]["responses"]
    body = schema["components"]["schemas"]["FeatureDetail"]["properties"]
    assert {"decoder_norms", "relative_norm", "sharing"} <= body.keys()


def _links(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td><a href="/saes/sae-x/features/(\d+)">', html)]


def test_the_sae_page_names_the_sources_and_sorts_and_filters(client, crosscoder):
    page = client.get("/saes/sae-x")
    assert page.status_code == 200
    assert '<span id="sae-kind">crosscoder</span>' in page.text
    for text in ("model A", "model B", "model-a", "model-b", "blocks.6.hook_resid_post",
                 'id="sort-relative-asc"', 'data-sharing="a_only"', "relative norm"):  # fmt: skip
        assert text in page.text, text
    params = {"sort": "relative_norm", "order": "asc", "sharing": "b_only", "artifacts": "include"}
    page = client.get("/saes/sae-x", params=params)
    assert page.status_code == 200
    rel = crosscoder.relative_norms
    want = sorted((i for i, c in enumerate(crosscoder.sharing) if c == "b_only"),
                  key=lambda i: (rel[i], i))  # fmt: skip
    assert _links(page.text) == want
    # The other links keep the sort and the class.
    assert "sort=relative_norm" in page.text.split('id="artifact-filter"')[1].split("</p>")[0]
    assert problem_of(client.get("/saes/sae-x", params={"sharing": "all"}), 422)
    # Another SAE's page has no such controls and ignores them.
    plain = client.get("/saes/sae-a", params={"sort": "relative_norm", "sharing": "a_only"})
    assert plain.status_code == 200 and 'id="sharing-filter"' not in plain.text
    assert "strongest first" in plain.text and 'id="sae-kind"' not in plain.text


def test_the_feature_page_shows_each_sources_norm_and_the_class(client, crosscoder):
    f = next(i for i, c in enumerate(crosscoder.sharing) if c == "b_only")
    page = client.get(f"/saes/sae-x/features/{f}")
    assert page.status_code == 200
    assert 'id="decoder-norms"' in page.text and "model A" in page.text
    for norm in crosscoder.decoder_norms[f]:
        assert f"{norm:.4g}" in page.text
    assert f"{crosscoder.relative_norms[f]:.3f}" in page.text
    assert 'id="sharing">b_only<' in page.text
    assert 'id="steer-form"' not in page.text
    plain = client.get("/saes/sae-a/features/1")
    assert 'id="decoder-norms"' not in plain.text and 'id="steer-form"' in plain.text


def test_live_encoding_and_steering_refuse_it(client, crosscoder):
    live = client.post("/v1/saes/sae-x/activations", json={"text": "hello"})
    assert _field(live) == "sae_id"
    assert "a crosscoder spans 2 sources (models); live encoding" in live.json()["detail"]
    steer = client.post("/v1/saes/sae-x/steer", json={
        "prompt": "hi", "features": [{"index": 0, "strength": 1.0}], "units": "raw"})  # fmt: skip
    assert _field(steer) == "sae_id" and "steering runs one model" in steer.json()["detail"]
