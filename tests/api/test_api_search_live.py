"""Label search, labelled filter, neighbours, votes and live text search over HTTP."""

from __future__ import annotations

import pytest

from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.registry import register_sae


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def labelled(db, catalog):
    for index, text in ((1, "closing brackets"), (2, "python imports"), (3, "python classes")):
        add_label(db, get_feature(db, "sae-a", index), text=text, author="seed")
    add_label(db, get_feature(db, "sae-b", 1), text="python keywords", author="seed")
    db.commit()


def test_label_search_filters_and_pages(client, labelled):
    body = client.get("/v1/labels/search", params={"q": "python", "limit": 2}).json()
    assert [(i["sae_id"], i["index"]) for i in body["items"]] == [("sae-b", 1), ("sae-a", 3)]
    rest = client.get(
        "/v1/labels/search", params={"q": "python", "limit": 2, "cursor": body["next_cursor"]}
    ).json()
    assert [i["index"] for i in rest["items"]] == [2] and rest["next_cursor"] is None
    only_a = client.get("/v1/labels/search", params={"q": "python -classes", "sae_id": "sae-a"})
    assert [i["index"] for i in only_a.json()["items"]] == [2]
    assert only_a.json()["items"][0]["label"]["text"] == "python imports"


@pytest.mark.parametrize(
    ("q", "problem"),
    [('"closing', "unclosed quote"), ("python OR", "ends with OR"), ("-python", "excludes")],
)
def test_malformed_label_search_is_422_naming_it(client, labelled, q, problem):
    response = client.get("/v1/labels/search", params={"q": q})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert problem in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "q"


def test_fts_operators_in_queries_are_words_not_500(client, labelled):
    for q in ["NEAR(python", "text:python", "^python", "python AND", "python*:", "(("]:
        assert client.get("/v1/labels/search", params={"q": q}).status_code in (200, 422), q


def test_labelled_filter(client, labelled):
    def indices(flag):
        params = {"labelled": flag, "limit": 100}
        return {
            i["index"] for i in client.get("/v1/saes/sae-a/features", params=params).json()["items"]
        }

    assert indices("true") == {1, 2, 3}
    assert indices("false") == set(range(57)) - {1, 2, 3}


def test_neighbours_route(client, catalog):
    want = catalog.indexes["sae-a"].neighbour_indices[4].tolist()
    body = client.get("/v1/saes/sae-a/features/4/neighbours").json()
    assert [n["index"] for n in body["items"]] == want
    assert [n["rank"] for n in body["items"]] == list(range(len(want)))
    assert client.get("/v1/saes/sae-a/features/99/neighbours").status_code == 404


def test_votes_need_label_scope_and_decide_the_current_label(client, db, catalog, keys):
    url = "/v1/saes/sae-a/features/5/labels"
    auto = client.post(url, json={"text": "auto", "source": "auto", "score": 0.5},
                       headers=auth(keys["explain"])).json()  # fmt: skip
    human = client.post(url, json={"text": "human"}, headers=auth(keys["label"])).json()
    vote_url = f"/v1/labels/{human['id']}/votes"
    assert client.post(vote_url, json={"vote": "down"}).status_code == 401
    assert (
        client.post(vote_url, json={"vote": "down"}, headers=auth(keys["read"])).status_code == 403
    )
    voted = client.post(vote_url, json={"vote": "down"}, headers=auth(keys["label"]))
    assert voted.status_code == 200 and voted.json()["votes_down"] == 1
    assert client.get("/v1/saes/sae-a/features/5").json()["label"]["id"] == auto["id"]
    client.post(vote_url, json={"vote": "up"}, headers=auth(keys["admin"]))
    history = client.get(url).json()
    assert history["current"]["id"] == human["id"]
    assert history["items"][0]["votes_up"] == 1 and history["items"][0]["votes_down"] == 1
    assert client.post("/v1/labels/999999/votes", json={"vote": "up"},
                       headers=auth(keys["label"])).status_code == 404  # fmt: skip


def test_live_search_bad_input(client, catalog):
    assert client.post("/v1/saes/nope/activations", json={"text": "hi"}).status_code == 404
    long = client.post("/v1/saes/sae-a/activations", json={"text": "x" * 5000})
    assert long.status_code == 413 and "at most" in long.json()["detail"]
    assert client.post("/v1/saes/sae-a/activations", json={"text": ""}).status_code == 422
    # sae-a is synthetic: no checkpoint to run
    assert client.post("/v1/saes/sae-a/activations", json={"text": "hi"}).status_code == 422


def test_live_search_runs_model_and_sae(client, db, tiny_llama, tmp_path):
    import torch

    from saefeat.lm import cached_model, parse_hook, run_to_hooks
    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE

    torch.manual_seed(0)
    hook = "blocks.1.hook_resid_post"
    sae = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=4, model=str(tiny_llama), hook=hook))
    path = sae.save(tmp_path / "sae")
    register_sae(
        db,
        sae_id="live",
        name="live",
        model_name=str(tiny_llama),
        hook_name=hook,
        architecture="topk",
        d_in=64,
        d_sae=96,
        k=4,
        checkpoint_path=str(path),
    )
    db.commit()
    text = "def f(x):\n    return x"
    body = client.post("/v1/saes/live/activations", json={"text": text, "top_n": 3}).json()
    lm = cached_model(str(tiny_llama), None, "cpu")
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    assert [t["token_id"] for t in body["tokens"]] == ids[0].tolist()
    acts = run_to_hooks(lm, ids, [parse_hook(hook)])[hook][0]
    dense = sae.dense_activations(acts.float())
    for t in body["tokens"]:
        got = [f["index"] for f in t["features"]]
        assert len(got) <= 3
        want = dense[t["position"]].topk(len(got)).indices.tolist()
        assert got == want
        assert all(f["activation"] > 0 for f in t["features"])
    assert cached_model.cache_info().currsize >= 1  # loaded once, kept


def test_label_history_pages(client, catalog, keys):
    url = "/v1/saes/sae-a/features/6/labels"
    for n in range(5):
        client.post(url, json={"text": f"label {n}"}, headers=auth(keys["label"]))
    first = client.get(url, params={"limit": 2}).json()
    assert [i["text"] for i in first["items"]] == ["label 4", "label 3"]
    assert first["current"]["text"] == "label 4"
    seen = [i["text"] for i in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = client.get(url, params={"limit": 2, "cursor": cursor}).json()
        seen += [i["text"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert seen == [f"label {n}" for n in range(4, -1, -1)]
    assert client.get(url, params={"cursor": "junk"}).status_code == 400
