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


def test_feature_page_names_the_hook_once(client, db, catalog):
    from saefeat.storage.catalog.models import SAE

    hook = "blocks.6.hook_resid_post"
    html = client.get("/saes/sae-a/features/0").text  # a name without the hook: added once
    title = re.search(r"<title>(.*?)</title>", html).group(1)
    heading = re.search(r"<h1>(.*?)</h1>", html).group(1)
    assert title.count(hook) == 1 and heading.count(hook) == 1, (title, heading)
    db.get(SAE, "sae-a").name = f"{hook} topk-57-k8"  # a trained SAE's default name
    db.commit()
    html = client.get("/saes/sae-a/features/0").text
    title = re.search(r"<title>(.*?)</title>", html).group(1)
    heading = re.search(r"<h1>(.*?)</h1>", html).group(1)
    assert title.count(hook) == 1 and heading.count(hook) == 1, (title, heading)
    assert "topk-57-k8" in title and "topk-57-k8" in heading
    assert client.get("/").text.count(hook) >= 1


def test_histogram_caption_ends_at_the_features_max(client, db, catalog):
    """Feature 836 said "0.0178 to 0.316" (the last bin's shared upper edge) while its max
    activation was 0.244: the caption is the drawn bins' range, up to the max."""
    import numpy as np

    from saefeat.api.page_routes import histogram_range
    from saefeat.features.accumulate import HIST_EDGES
    from saefeat.storage.catalog.models import Feature

    edges = HIST_EDGES.tolist()
    counts = [0] * (len(edges) - 1)
    first, last = (
        int(np.searchsorted(HIST_EDGES, 0.02)) - 1,
        int(np.searchsorted(HIST_EDGES, 0.244)) - 1,
    )
    counts[first], counts[last] = 7, 2
    assert f"{edges[first]:.3g}" == "0.0178" and f"{edges[last + 1]:.3g}" == "0.316"
    row = db.get(Feature, get_feature(db, "sae-a", 0).id)
    row.histogram, row.max_activation = {"edges": edges, "counts": counts}, 0.244
    db.commit()
    html = client.get("/saes/sae-a/features/0").text
    caption = re.search(r'<p id="histogram-range" class="muted">(.*?)</p>', html).group(1)
    assert caption.startswith("activation 0.0178 to 0.244 "), caption
    assert _embedded_data(html)["histogram"]["counts"] == counts  # the bars drawn

    # The bounds: a max outside its bin is held to it; the lowest and top bins are open.
    hist = {"edges": edges, "counts": counts}
    assert histogram_range(hist, 5.0) == "activation 0.0178 to 0.316"
    assert histogram_range(hist, None) == "activation 0.0178 to 0.316"
    low = {"edges": edges, "counts": [1] + [0] * (len(counts) - 1)}
    assert histogram_range(low, 5e-5) == "activation up to 5e-05"
    assert histogram_range(low, 1.0) == "activation up to 0.000133"
    top = {"edges": edges, "counts": [0] * (len(counts) - 1) + [3]}
    assert histogram_range(top, 4000.0) == "activation 750 to 4e+03"
    assert histogram_range({"edges": edges, "counts": [0] * len(counts)}, 1.0) is None
    assert histogram_range(None, 1.0) is None


def test_favicon_is_served_and_linked(client, make_settings):
    from fastapi.testclient import TestClient

    from saefeat.api.app import create_app

    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/")
    assert icon.content.startswith(b"<svg")
    assert '<link rel="icon" href="/static/favicon.svg"' in client.get("/").text
    assert client.get("/static/favicon.svg").status_code == 200
    # Open like /static when reads need a key: a browser asks for it with none.
    with TestClient(create_app(make_settings(require_read_key=True))) as closed:
        assert closed.get("/").status_code == 401
        assert closed.get("/favicon.ico").status_code == 200


def test_unexplained_feature_page_says_how_to_explain_it(client, catalog):
    html = client.get("/saes/sae-a/features/3").text
    found = re.search(r'<p class="muted" id="no-explanations">(.*?)</p>', html, re.S)
    assert found, "a feature with no explanation says so"
    # The command names this feature, so it can be pasted as it is.
    assert "saefeat explain --sae sae-a --features 3</code>" in found.group(1)
    assert "{&#34;features&#34;: [3]}" in found.group(1) or '{"features": [3]}' in found.group(1)
