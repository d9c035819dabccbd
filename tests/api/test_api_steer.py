"""POST /v1/saes/{id}/steer over HTTP: the tiny Llama and a checkpoint on disk."""

from __future__ import annotations

import pytest
import torch

from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.storage.catalog.registry import register_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture
def steerable(db, tiny_llama, tmp_path) -> str:
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=4, model=str(tiny_llama), hook=HOOK))
    path = sae.save(tmp_path / "sae-steer")
    register_sae(db, sae_id="steer", name="steer", model_name=str(tiny_llama), hook_name=HOOK,
                 architecture="topk", d_in=64, d_sae=96, k=4,
                 checkpoint_path=str(path))  # fmt: skip
    db.commit()
    return "steer"


def body(**overrides):
    return {"prompt": "def add(a, b):", "features": [{"index": 5, "strength": 30.0}],
            "temperature": 0.8, "seed": 2, "max_new_tokens": 6} | overrides  # fmt: skip


def test_steer_returns_both_continuations(client, steerable):
    response = client.post("/v1/saes/steer/steer", json=body(method="clamp"))
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["hook"] == HOOK and out["method"] == "clamp"
    assert [p["index"] for p in out["promoted"]] == [5] and len(out["promoted"][0]["tokens"]) == 5
    for run in ("default", "steered"):
        n = len(out[run]["token_ids"])
        assert 1 <= n <= 6 and len(out[run]["promoted_logprobs"]) == n
        assert all(len(pos) == 1 and len(pos[0]) == 5 for pos in out[run]["promoted_logprobs"])
    assert out["steered"]["promoted_logprobs"] != out["default"]["promoted_logprobs"]

    zero = client.post("/v1/saes/steer/steer",
                       json=body(features=[{"index": 5, "strength": 0}])).json()  # fmt: skip
    assert zero["steered"]["token_ids"] == zero["default"]["token_ids"]
    assert zero["default"]["token_ids"] == out["default"]["token_ids"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"features": []}, "features"),
        ({"features": [{"index": 96, "strength": 1}]}, "features.0.index"),
        ({"max_new_tokens": 65}, "max_new_tokens"),
        ({"prompt": "word " * 600}, "prompt"),
        ({"method": "scale"}, "method"),
        ({"temperature": -0.5}, "temperature"),
        ({"seed": 10**30}, "seed"),  # was a 500: torch's manual_seed overflowed
        ({"max_tokens": 8}, "max_tokens"),  # a misspelt field is not silently dropped
        ({"features": [{"index": 5, "strenght": 1.0}]}, "features.0.strength"),
    ],
)
def test_bad_input_is_422_naming_the_field(client, steerable, overrides, field):
    response = client.post("/v1/saes/steer/steer", json=body(**overrides))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == field


def test_non_finite_strength_is_422(client, steerable):
    raw = '{"prompt": "hi", "features": [{"index": 1, "strength": NaN}]}'
    response = client.post("/v1/saes/steer/steer", content=raw,
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "features.0.strength"


def test_unknown_sae_and_sae_without_checkpoint(client, catalog):
    assert client.post("/v1/saes/nope/steer", json=body()).status_code == 404
    response = client.post("/v1/saes/sae-a/steer", json=body())
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "sae_id"
