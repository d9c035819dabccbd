"""POST /v1/contrasts refuses what it cannot run before a job row is written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.storage.catalog.models import Job


@pytest.mark.parametrize("device", ["foo", "cuda:99"])  # cuda:99 waited for ever on Ray
def test_a_device_the_cluster_lacks_is_422_and_stores_nothing(client, db, keys, device):
    body = {"sae": "sae-x", "a": "as-a", "b": "as-b", "device": device}
    response = client.post("/v1/contrasts", json=body,
                           headers={"Authorization": f"Bearer {keys['admin']}"})  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["field"] == "device"
    assert db.scalar(select(func.count()).select_from(Job)) == 0


def test_an_sae_with_weights_but_no_catalog_row_is_422(app, client, db, keys):
    # As `saefeat import` stores an SAELens file: the job ran the whole SAE pass, then
    # failed on the results' foreign key (the CLI: an IntegrityError traceback).
    TopKSAE(SAEConfig(d_in=8, d_sae=16, k=2, hook="blocks.0.hook_resid_post")).save(
        app.state.settings.saes_dir / "sl-copy"
    )
    response = client.post("/v1/contrasts", json={"sae": "sl-copy", "a": "as-a", "b": "as-b"},
                           headers={"Authorization": f"Bearer {keys['admin']}"})  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "sae"
    assert "catalog" in response.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Job)) == 0
