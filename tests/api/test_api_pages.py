"""The server-rendered pages over TestClient (the browser test drives them for real)."""

from __future__ import annotations

import json
import re

from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.queries import get_feature


def _embedded_data(html: str) -> dict:
    found = re.search(r'<script id="feature-data" type="application/json">(.*?)</script>', html)
    assert found, "the page embeds its data for static/feature.js"
    return json.loads(found.group(1))


def test_feature_page_shows_everything(client, db, catalog):
    index = catalog.indexes["sae-a"]
    f = next(i for i in range(index.d_sae) if index.histograms[i].sum() > 0)
    add_label(db, get_feature(db, "sae-a", f), text="angle <brackets> & co")
    db.commit()
    html = client.get(f"/saes/sae-a/features/{f}").text
    assert "angle &lt;brackets&gt; &amp; co" in html  # escaped
    for near in index.neighbour_indices[f]:
        assert f'href="/saes/sae-a/features/{near}"' in html
    assert 'id="label-form"' in html and '<script src="/static/feature.js">' in html
    # What the script draws (the browser test checks the drawing itself).
    data = _embedded_data(html)
    projection = index.projections[f]
    assert [t["token"] for t in data["projection"]["top"]] == projection.top_strs
    assert [t["token"] for t in data["projection"]["bottom"]] == projection.bottom_strs
    assert len(data["examples"]) == sum(1 for e in index.examples if e.feature_index == f)
    assert data["histogram"]["counts"] == index.histograms[f].tolist()
    assert client.get("/static/feature.js").status_code == 200


def test_embedded_data_cannot_close_its_script_element(client, db, catalog):
    from saefeat.storage.catalog.models import VocabToken

    feature = get_feature(db, "sae-a", 0)
    token = db.get(VocabToken, (feature.id, "top", 0))
    token.token_str = "</script><b>x</b>&"
    db.commit()
    html = client.get("/saes/sae-a/features/0").text
    assert "</script><b>" not in html
    data = _embedded_data(html)
    assert data["projection"]["top"][0]["token"] == "</script><b>x</b>&"


def test_steering_form_offers_the_servers_token_limit(app, client, catalog):
    app.state.settings = app.state.settings.model_copy(update={"steer_max_new_tokens": 16})
    html = client.get("/saes/sae-a/features/0").text
    # A fixed max of 64 and default of 24 made the form's first request a 422 here.
    assert 'name="max_new_tokens" type="number" min="1" max="16" value="16"' in html


def test_missing_feature_page_is_404(client, catalog):
    assert client.get("/saes/sae-a/features/999").status_code == 404
    assert client.get("/saes/nope/features/1").status_code == 404


def test_search_page_modes(client, db, catalog):
    add_label(db, get_feature(db, "sae-b", 3), text="python keywords")
    db.commit()
    home = client.get("/").text
    assert 'href="/?sae_id=sae-a"' in home
    found = client.get("/", params={"q": "keyword"}).text
    assert 'href="/saes/sae-b/features/3"' in found and "python keywords" in found
    bad = client.get("/", params={"q": '"open'})
    assert bad.status_code == 422 and "unclosed quote" in bad.text
    listed = client.get("/", params={"sae_id": "sae-b", "labelled": "yes"}).text
    assert listed.count('href="/saes/sae-b/features/') == 1
    by_token = client.get("/", params={"token": "cat"}).text
    assert 'id="results"' in by_token
