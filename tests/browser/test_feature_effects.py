"""A feature page draws its effect on the next token: measured first (in percentage
points), then the de-biased projection, the raw projection folded away."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import serve_in_thread

D_SAE = 16


@pytest.fixture
def served_effects(tmp_path) -> Iterator[tuple[str, object]]:
    from synthetic_catalog import register_test_sae, synthetic_effects, synthetic_feature_index

    from saefeat.api.app import create_app
    from saefeat.config import Settings
    from saefeat.storage.catalog.writer import write_feature_index

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    app = create_app(settings)
    with app.state.sessionmaker() as session:
        register_test_sae(session, "sae-e", D_SAE)
        session.commit()
        index = synthetic_effects(synthetic_feature_index(D_SAE, seed=3), n=6, seed=3)
        write_feature_index(session, "sae-e", index)
    with serve_in_thread(app) as url:
        yield url, index


def _cells(browser, table: str) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tr")
    return [[td.get_attribute("textContent") for td in r.find_elements(By.TAG_NAME, "td")]
            for r in rows]  # fmt: skip


def test_measured_effect_is_drawn_first_in_points(served_effects, browser):
    url, index = served_effects
    f = next(i for i in range(D_SAE) if index.density[i] > 0)
    browser.get(f"{url}/saes/sae-e/features/{f}")
    measured = next(e for e in index.effects if e.feature_index == f and e.method == "measured")
    up = _cells(browser, "effect-measured-up")
    assert [c[0] for c in up] == measured.up_strs
    assert up[0][1] == f"+{100 * measured.up_values[0]:.1f} pts"
    down = _cells(browser, "effect-measured-down")
    assert down[0][1] == f"{100 * measured.down_values[0]:.1f} pts"
    debiased = next(e for e in index.effects if e.feature_index == f and e.method == "debiased")
    assert [c[0] for c in _cells(browser, "effect-debiased-up")] == debiased.up_strs
    # Measured above de-biased; the raw projection is there but folded away.
    y = {i: browser.find_element(By.ID, i).location["y"]
         for i in ("effect-measured-up", "effect-debiased-up")}  # fmt: skip
    assert y["effect-measured-up"] < y["effect-debiased-up"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#projection-top tr")) == 8
    assert not browser.find_element(By.ID, "projection-top").is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#raw-projection summary").click()
    assert browser.find_element(By.ID, "projection-top").is_displayed()


def test_a_feature_that_never_fired_says_none(served_effects, browser):
    url, index = served_effects
    dead = next(i for i in range(D_SAE) if index.density[i] == 0)
    browser.get(f"{url}/saes/sae-e/features/{dead}")
    assert _cells(browser, "effect-measured-up") == [["none"]]
    assert len(_cells(browser, "effect-debiased-up")) == 6
