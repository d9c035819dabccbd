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
            "temperature": 0.8, "seed": 2, "max_new_tokens": 6,
            "units": "raw"} | overrides  # fmt: skip


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
        ({"units": "sigma"}, "units"),
        # The default unit is the feature's max activation: this SAE was never indexed.
        ({"units": "max_activation"}, "features.0.strength"),
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


@pytest.fixture
def indexed_steerable(db, steerable) -> dict[int, float]:
    """The steerable SAE indexed (synthetic statistics): feature -> its max activation."""
    from synthetic_catalog import synthetic_feature_index

    from saefeat.storage.catalog.writer import write_feature_index

    index = synthetic_feature_index(96, n_examples=2, n_quantile=0, seed=1)
    index.max_activation[7] = 0.0  # never fired
    write_feature_index(db, steerable, index)
    return dict(enumerate(index.max_activation.tolist()))


def test_strengths_are_multiples_of_the_max_activation(client, indexed_steerable):
    m = indexed_steerable[5]
    assert m > 0
    out = client.post("/v1/saes/steer/steer", json=body(
        features=[{"index": 5, "strength": 2.0}], method="clamp", units="max_activation",
    )).json()  # fmt: skip
    assert out["units"] == "max_activation"
    assert out["applied"] == [{"index": 5, "strength": 2.0, "unit": pytest.approx(m),
                               "raw_strength": pytest.approx(2 * m)}]  # fmt: skip
    # The same raw value sent as raw steers the same, token for token.
    raw = client.post("/v1/saes/steer/steer", json=body(
        features=[{"index": 5, "strength": 2 * m}], method="clamp", units="raw",
    )).json()  # fmt: skip
    assert raw["applied"][0]["unit"] == 1.0
    assert raw["steered"]["token_ids"] == out["steered"]["token_ids"]
    # Units is the default; a feature that never fired has no multiple.
    sent = body(features=[{"index": 7, "strength": 2.0}])
    del sent["units"]
    response = client.post("/v1/saes/steer/steer", json=sent)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "features.0.strength"


def test_the_default_continuation_is_kept_between_requests(client, steerable):
    first = client.post("/v1/saes/steer/steer", json=body(prompt="kept between requests"))
    again = client.post("/v1/saes/steer/steer", json=body(
        prompt="kept between requests", features=[{"index": 9, "strength": 12.0}]))  # fmt: skip
    assert first.json()["default_cached"] is False and again.json()["default_cached"] is True
    assert again.json()["default"]["token_ids"] == first.json()["default"]["token_ids"]
    other = client.post("/v1/saes/steer/steer", json=body(prompt="kept between requests", seed=3))
    assert other.json()["default_cached"] is False  # another seed is another default
