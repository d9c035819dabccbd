"""Issue 21 over HTTP: the artifact filter and flag, token search by what features fire
on, phrase search, the pages' new parts, and 4xx problems for bad parameters."""

from __future__ import annotations

import pytest
from problems import problem_of
from synthetic_catalog import register_test_sae, synthetic_feature_index

from saefeat.features.records import FeatureExample, FiredTokenShare
from saefeat.storage.catalog.writer import write_feature_index


@pytest.fixture
def readable(db):
    register_test_sae(db, "sae-r", 6)
    db.commit()
    index = synthetic_feature_index(6, n_examples=0, n_quantile=0, seed=4, dead_fraction=0.0)
    index.max_activation[:] = [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]
    index.artifacts = ["after special token '<|im_start|>'", None, None, None, None, None]
    index.fired_tokens = [FiredTokenShare(1, 0, " cat", 0.7), FiredTokenShare(2, 0, "cat", 0.9)]
    tokens = ["The", " black", " cat", " sat"]
    index.examples = [FeatureExample(f, 0, 2.0, f, 5, [1, 2, 3, 4], tokens, [0.0] * 4, 2, "top")
                      for f in range(6)]  # fmt: skip
    index.examples += [
        FeatureExample(1, q, 6.5 - 1.5 * q, 40 + q, 9, [5, 6, 7], ["a", " b", " c"],
                       [0.0] * 3, 1, "quantile")
        for q in range(3)
    ]  # fmt: skip
    index.logit_histograms = [[3, 40, 7]] * 6
    index.logit_ranges = [[-2.0, 3.0]] * 6
    index.n_quantile_bins = 4
    write_feature_index(db, "sae-r", index)


def test_feature_lists_leave_artifacts_out_unless_asked(client, readable):
    url = "/v1/saes/sae-r/features"
    assert [f["index"] for f in client.get(url).json()["items"]] == [1, 2, 3, 4, 5]
    every = client.get(url, params={"artifacts": "include"}).json()["items"]
    assert every[0] == every[0] | {"index": 0, "artifact": "after special token '<|im_start|>'"}
    only = client.get(url, params={"artifacts": "only"}).json()["items"]
    assert [f["index"] for f in only] == [0]
    body = problem_of(client.get(url, params={"artifacts": "maybe"}), 422)
    assert body["errors"][0]["field"] == "artifacts"
    detail = client.get("/v1/saes/sae-r/features/0").json()
    assert detail["artifact"].startswith("after special token")
    assert detail["histogram"]["logits"] == {"min": -2.0, "max": 3.0, "counts": [3, 40, 7]}
    assert detail["histogram"]["quantile_bins"] == 4


def test_token_search_by_what_features_fire_on(client, readable):
    got = client.get("/v1/features/search", params={"token": " cat", "by": "fires"}).json()
    assert [(m["index"], m["value"], m["token"]) for m in got["items"]] == [
        (2, 0.9, "cat"),
        (1, 0.7, " cat"),
    ]
    assert client.get("/v1/features/search", params={"token": "cat", "by": "effect"}).json()[
        "items"] == []  # fmt: skip
    body = problem_of(client.get("/v1/features/search", params={"token": "cat", "by": "x"}), 422)
    assert body["errors"][0]["field"] == "by"
    unknown = {"token": "cat", "by": "fires", "sae_id": "nope"}
    problem_of(client.get("/v1/features/search", params=unknown), 404)


def test_phrase_search(client, readable):
    url = "/v1/features/search/phrase"
    got = client.get(url, params={"phrase": "BLACK CAT", "sae_id": "sae-r", "limit": 2}).json()
    # Searches list flagged features too, with the flag.
    assert [(m["index"], bool(m["artifact"])) for m in got["items"]] == [(0, True), (1, False)]
    first = got["items"][1]
    assert first["tokens"][first["focus"]] == " cat" and first["label"] is None
    assert got["next_cursor"]
    rest = client.get(url, params={"phrase": "black cat", "cursor": got["next_cursor"],
                                   "sae_id": "sae-r"}).json()  # fmt: skip
    assert [m["index"] for m in rest["items"]] == [2, 3, 4, 5]
    assert client.get(url, params={"phrase": "The", "sae_id": "sae-r"}).json()["items"] == []
    assert len(client.get(url, params={"phrase": "The", "anywhere": True}).json()["items"]) == 6
    bad = [
        ({}, 422, "phrase"),
        ({"phrase": ""}, 422, "phrase"),
        ({"phrase": "   "}, 422, "phrase"),
        ({"phrase": "x" * 201}, 422, "phrase"),
        ({"phrase": "cat", "limit": 0}, 422, "limit"),
        ({"phrase": "cat", "cursor": "zz"}, 400, "cursor"),
        ({"phrase": "cat", "sae_id": "nope"}, 404, "sae_id"),
    ]
    for params, status, field in bad:
        body = problem_of(client.get(url, params=params), status)
        fields = [e["field"] for e in body.get("errors") or []] or [body.get("field")]
        assert field in str(fields) or field in body["detail"], body


def test_pages_show_the_flag_the_modes_and_the_filter(client, readable):
    page = client.get("/saes/sae-r/features/0").text
    assert 'id="artifact-flag"' in page and "after special token" in page
    assert 'id="logit-section"' in page
    assert 'id="artifact-flag"' not in client.get("/saes/sae-r/features/1").text
    sae = client.get("/saes/sae-r").text
    assert "/saes/sae-r/features/0" not in sae and 'id="artifact-filter"' in sae
    assert "/saes/sae-r/features/0" in client.get("/saes/sae-r?artifacts=include").text
    fires = client.get("/", params={"token": "cat", "by": "fires"}).text
    assert "fires on &#39;cat&#39;: 90%" in fires and 'value="fires" selected' in fires
    phrase = client.get("/", params={"phrase": "black cat", "sae_id": "sae-r"}).text
    assert phrase.count('href="/saes/sae-r/features/') == 6 and "[ cat]" in phrase
    listed = client.get("/", params={"sae_id": "sae-r", "artifacts": "only"}).text
    assert 'href="/saes/sae-r/features/0"' in listed and 'class="artifact"' in listed


def test_the_fire_table_gets_each_features_label_and_flag(client, db, tiny_llama, tmp_path):
    import torch

    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE
    from saefeat.storage.catalog.labels import add_label
    from saefeat.storage.catalog.queries import get_feature
    from saefeat.storage.catalog.registry import register_sae

    torch.manual_seed(0)
    hook = "blocks.1.hook_resid_post"
    sae = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=4, model=str(tiny_llama), hook=hook))
    register_sae(db, sae_id="live", name="live", model_name=str(tiny_llama), hook_name=hook,
                 architecture="topk", d_in=64, d_sae=96, k=4,
                 checkpoint_path=str(sae.save(tmp_path / "sae")))  # fmt: skip
    db.commit()
    text = "def f(x):\n    return x"

    def run() -> list[dict]:
        body = client.post("/v1/saes/live/activations", json={"text": text, "top_n": 3}).json()
        return [f for t in body["tokens"] for f in t["features"]]

    # Not indexed yet: no labels, no flags, and the table still works.
    first = run()
    assert first and all(f["label"] is None and f["artifact"] is None for f in first)
    labelled, flagged = (
        first[0]["index"],
        next(f["index"] for f in first if f["index"] != first[0]["index"]),
    )
    index = synthetic_feature_index(96, n_examples=1, seed=1)
    index.artifacts = [("position <= 2" if i == flagged else None) for i in range(96)]
    write_feature_index(db, "live", index)
    add_label(db, get_feature(db, "live", labelled), text="function definitions")
    db.commit()
    again = {f["index"]: f for f in run()}
    assert again[labelled]["label"] == "function definitions"
    assert again[flagged]["artifact"] == "position <= 2"
    assert all(f["activation"] > 0 for f in again.values())
