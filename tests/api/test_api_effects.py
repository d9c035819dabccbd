"""A feature's effect on the next token in the JSON API and on its page (measured first)."""

from __future__ import annotations

import json
import re

import pytest
from synthetic_catalog import register_test_sae, synthetic_effects, synthetic_feature_index

from saefeat.api.schemas import FeatureDetail
from saefeat.storage.catalog.models import TokenEffect
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 12


@pytest.fixture
def index(db):
    register_test_sae(db, "sae-e", D_SAE)
    db.commit()
    written = synthetic_effects(synthetic_feature_index(D_SAE, seed=7), n=5, seed=7)
    write_feature_index(db, "sae-e", written)
    return written


def _lists(index, f: int, method: str) -> dict:
    eff = next(e for e in index.effects if e.feature_index == f and e.method == method)
    return {"up": (eff.up_strs, eff.up_values), "down": (eff.down_strs, eff.down_values)}


def _body_lists(body: dict, method: str) -> dict:
    sides = body["effects"][method]
    return {s: ([t["token"] for t in sides[s]], [t["value"] for t in sides[s]]) for s in sides}


def test_feature_detail_returns_both_effects(client, index):
    f = next(i for i in range(D_SAE) if index.density[i] > 0)
    body = client.get(f"/v1/saes/sae-e/features/{f}").json()
    FeatureDetail.model_validate(body)
    for method in ("measured", "debiased"):
        assert _body_lists(body, method) == _lists(index, f, method)
        assert [t["rank"] for t in body["effects"][method]["up"]] == list(range(5))


def test_a_feature_that_never_fired_has_no_measured_effect(client, index):
    dead = next(i for i in range(D_SAE) if index.density[i] == 0)
    body = client.get(f"/v1/saes/sae-e/features/{dead}").json()
    assert body["effects"]["measured"] == {"up": [], "down": []}
    assert _body_lists(body, "debiased") == _lists(index, dead, "debiased")


def test_an_index_without_effects_answers_empty_lists(client, catalog):
    body = client.get("/v1/saes/sae-a/features/0").json()
    FeatureDetail.model_validate(body)
    empty = {"up": [], "down": []}
    assert body["effects"] == {"measured": empty, "debiased": empty}


def test_page_shows_measured_first_then_debiased_then_raw(client, db, index):
    f = next(i for i in range(D_SAE) if index.density[i] > 0)
    # A token that would close the script element stays inside the embedded JSON.
    row = db.get(TokenEffect, (get_feature(db, "sae-e", f).id, "measured", "up", 0))
    row.token_str = "</script><b>x</b>"
    db.commit()
    html = client.get(f"/saes/sae-e/features/{f}").text
    assert "</script><b>" not in html
    order = [
        html.index(f'id="{i}"')
        for i in ("effect-measured-up", "effect-debiased-up", "raw-projection", "projection-top")
    ]
    assert order == sorted(order)
    assert "Measured effect on the next token" in html
    data = json.loads(
        re.search(r'<script id="feature-data" type="application/json">(.*?)</script>', html)[1]
    )
    assert data["effects"]["measured"]["up"][0]["token"] == "</script><b>x</b>"
    assert [t["token"] for t in data["effects"]["debiased"]["down"]] == _lists(
        index, f, "debiased"
    )["down"][0]
