"""Checks shared by the end-to-end tests on the tiny Llama and on SmolLM2-135M."""

from __future__ import annotations

import torch
from fastapi.testclient import TestClient

from saefeat.api.app import create_app
from saefeat.lm import load_model, parse_hook, run_to_hooks
from saefeat.sae import load_sae
from saefeat.storage.catalog import create_api_key
from saefeat.storage.catalog.db import catalog_session


def check_examples_recompute(settings, aset, sae_id, model_name, dtype, n_features=5, atol=0.05):
    """Stored top examples are sorted, and re-running model + SAE on the stored context
    gives the stored activation at the stored position."""
    from saefeat.storage.catalog import feature_reads, queries

    sae = load_sae(settings.saes_dir / sae_id)
    lm = load_model(model_name, dtype=dtype)
    point = parse_hook(sae.cfg.hook)
    checked = 0
    with catalog_session(settings) as s:
        page = queries.list_features(s, sae_id, sort="max_activation", limit=n_features)
        for f in page.items:
            examples = [e for e in feature_reads.feature_examples(s, f.id) if e.kind == "top"]
            acts = [e.activation for e in examples]
            assert acts == sorted(acts, reverse=True)
            assert abs(acts[0] - f.max_activation) < 1e-4
            e = examples[0]
            ids = torch.from_numpy(aset.tokens(e.context_index, e.context_index + 1)).long()
            x = run_to_hooks(lm, ids, [point])[point.name][0].float()
            with torch.no_grad():
                dense = sae.dense_activations(x)
            got = float(dense[e.position, f.index])
            assert abs(got - e.activation) <= atol * max(1.0, abs(e.activation)), (got, e)
            assert e.token_ids[e.focus] == int(ids[0, e.position])
            checked += 1
    assert checked == n_features


def check_api(settings, sae_id):
    with TestClient(create_app(settings)) as client:
        saes = client.get("/v1/saes").json()["items"]
        assert sae_id in [s["id"] for s in saes]
        page = client.get(f"/v1/saes/{sae_id}/features", params={"sort": "density", "limit": 5})
        assert page.status_code == 200
        index = page.json()["items"][0]["index"]
        feature = client.get(f"/v1/saes/{sae_id}/features/{index}").json()
        assert feature["examples"] and feature["projection"]["top"]
        assert feature["effects"]["measured"]["up"] and feature["effects"]["debiased"]["up"]
        url = f"/v1/saes/{sae_id}/features/{index}/labels"
        assert client.post(url, json={"text": "anything"}).status_code == 401
        bad = {"Authorization": "Bearer sfk_wrong"}
        assert client.post(url, json={"text": "anything"}, headers=bad).status_code == 401
        with catalog_session(settings) as s:
            key = create_api_key(s, "test", ["label"])
            s.commit()
        ok = client.post(url, json={"text": "python keywords"},
                         headers={"Authorization": f"Bearer {key}"})  # fmt: skip
        assert ok.status_code == 201, ok.text
        again = client.get(f"/v1/saes/{sae_id}/features/{index}").json()
        assert again["label"]["text"] == "python keywords"
