"""The server-rendered pages over TestClient (the browser test drives them for real)."""

from __future__ import annotations

import re

from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.queries import get_feature


def test_feature_page_shows_everything(client, db, catalog):
    index = catalog.indexes["sae-a"]
    f = next(i for i in range(index.d_sae) if index.histograms[i].sum() > 0)
    add_label(db, get_feature(db, "sae-a", f), text="angle <brackets> & co")
    db.commit()
    html = client.get(f"/saes/sae-a/features/{f}").text
    assert "angle &lt;brackets&gt; &amp; co" in html  # escaped
    assert '<svg id="histogram"' in html and html.count("<rect ") >= 1
    for near in index.neighbour_indices[f]:
        assert f'href="/saes/sae-a/features/{near}"' in html
    projection = index.projections[f]
    for token in projection.top_strs + projection.bottom_strs:
        assert token.replace("&", "&amp;") in html
    n_examples = sum(1 for e in index.examples if e.feature_index == f)
    assert html.count('class="example"') == n_examples
    assert re.search(r'class="tok focus" style="background: rgba\(230, 138, 0, [0-9.]+\)"', html)
    assert 'id="label-form"' in html


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
