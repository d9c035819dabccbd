"""The SAE page's map in headless Chromium: one link per placed feature, each to its
feature page; the colouring switches between density and label score. Nothing on the
page is fetched from outside the server (it must work offline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import serve_in_thread
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait
from synthetic_catalog import synthetic_feature_index

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # kept by CI, gitignored
D_SAE = 60
UNPLACED = 11  # a feature with no coordinates gets no point


@pytest.fixture
def mapped(tmp_path) -> Iterator[str]:
    from saefeat.api.app import create_app
    from saefeat.config import Settings
    from saefeat.storage.catalog import queries
    from saefeat.storage.catalog.labels import add_label
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.writer import write_feature_index

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    app = create_app(settings)
    index = synthetic_feature_index(D_SAE, n_examples=2, n_quantile=0, seed=4)
    rng = np.random.default_rng(0)
    index.umap = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(6, 1, (30, 2))])
    index.umap[UNPLACED] = np.nan
    with app.state.sessionmaker() as s:
        register_sae(s, sae_id="sae-map", name="map test", model_name="SmolLM2-135M-Instruct",
                     hook_name="blocks.6.hook_resid_post", architecture="topk", d_in=576,
                     d_sae=D_SAE, k=8)  # fmt: skip
        s.commit()
        write_feature_index(s, "sae-map", index)
        add_label(s, queries.get_feature(s, "sae-map", 40), text="closing brackets",
                  source="auto", author="explainer", score=0.9)  # fmt: skip
        s.commit()
    with serve_in_thread(app) as url:
        yield url


def test_the_map_has_one_link_per_feature_and_each_opens_its_page(mapped, browser):
    browser.get(f"{mapped}/saes/sae-map")
    svg = browser.find_element(By.ID, "feature-map")
    links = svg.find_elements(By.CSS_SELECTOR, "a")
    circles = svg.find_elements(By.CSS_SELECTOR, "circle")
    hrefs = [a.get_dom_attribute("href") for a in links]  # an SVG link's href is not a URL
    assert len(links) == len(circles) == D_SAE - 1
    want = {f"/saes/sae-map/features/{i}" for i in range(D_SAE) if i != UNPLACED}
    assert len(set(hrefs)) == len(hrefs) and set(hrefs) == want  # one per placed feature
    # Every point lies inside the drawing.
    box = svg.rect
    for c in circles[:10]:
        r = c.rect
        assert box["x"] <= r["x"] <= box["x"] + box["width"]
        assert box["y"] <= r["y"] <= box["y"] + box["height"]
    # The colouring: by density first, by label score when chosen (feature 40 has one).
    point = svg.find_element(By.CSS_SELECTOR, 'a[href$="/features/40"] circle')
    by_density = point.value_of_css_property("fill")
    Select(browser.find_element(By.ID, "map-colour")).select_by_value("score")
    assert "by-score" in svg.get_attribute("class")
    assert point.value_of_css_property("fill") != by_density
    unscored = svg.find_element(By.CSS_SELECTOR, 'a[href$="/features/41"] circle')
    assert unscored.value_of_css_property("fill") == "rgb(200, 200, 200)"
    assert browser.find_element(By.CLASS_NAME, "legend-score").is_displayed()
    ARTIFACTS.mkdir(exist_ok=True)
    browser.execute_script("arguments[0].scrollIntoView();", svg)
    browser.save_screenshot(str(ARTIFACTS / "sae_map.png"))
    # Clicking a point opens its feature page.
    browser.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}));", point
    )
    WebDriverWait(browser, 20).until(ec.url_contains("/saes/sae-map/features/40"))
    assert browser.find_element(By.TAG_NAME, "h1").text


def test_nothing_is_fetched_from_elsewhere(mapped, browser):
    browser.get(f"{mapped}/saes/sae-map")
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name);"
    )
    assert urls and all(u.startswith(mapped) for u in urls), urls
