"""Issue 21 in Chromium: a feature page shows its artifact flag, quantile samples under
labelled activation bins, histograms with ticked axes and the logit histogram; the SAE
page leaves artifacts out of its list until asked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser.conftest import Served, serve_in_thread

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # kept by CI, gitignored
REASON = "after special token '<|im_start|>'"


@pytest.fixture
def flagged(tmp_path) -> Iterator[Served]:
    from synthetic_catalog import synthetic_feature_index

    from saefeat.api.app import create_app
    from saefeat.config import Settings
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.writer import write_feature_index

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    app = create_app(settings)
    index = synthetic_feature_index(12, n_examples=5, n_quantile=8, seed=5, dead_fraction=0.0)
    feature = int(index.max_activation.argmax())  # the strongest: first in the list
    index.artifacts = [REASON if i == feature else None for i in range(12)]
    index.n_quantile_bins = 4
    index.logit_histograms = [[1, 5, 40, 300, 900, 200, 30, 4]] * 12
    index.logit_ranges = [[-3.2, 4.1]] * 12
    with app.state.sessionmaker() as session:
        register_sae(session, sae_id="sae-f", name="flags", model_name="SmolLM2-135M",
                     hook_name="blocks.6.hook_resid_post", architecture="topk", d_in=576,
                     d_sae=12, k=4)  # fmt: skip
        session.commit()
        write_feature_index(session, "sae-f", index)
    with serve_in_thread(app) as url:
        yield Served(url, "", "sae-f", feature)


def test_feature_page_names_the_artifact_and_labels_the_bins(flagged, browser):
    browser.get(f"{flagged.url}/saes/{flagged.sae_id}/features/{flagged.feature}")
    flag = browser.find_element(By.ID, "artifact-flag")
    assert flag.is_displayed() and REASON in flag.text

    headings = browser.find_elements(By.CSS_SELECTOR, "#quantile-examples h3.quantile-bin")
    assert headings, "quantile samples have no bin headings"
    assert all(h.text.startswith("activation ") and "% of max" in h.text for h in headings)
    # Every sample sits in the range its heading names, strongest bin first.
    los = []
    for h in headings:
        lo, hi = float(h.get_attribute("data-lo")), float(h.get_attribute("data-hi"))
        los.append(lo)
        block = h.find_element(By.XPATH, "following-sibling::div[1]")
        values = [float(e.get_attribute("data-activation"))
                  for e in block.find_elements(By.CSS_SELECTOR, ".example")]  # fmt: skip
        assert values and all(lo - 1e-9 <= v <= hi + 1e-9 for v in values), (lo, hi, values)
    assert los == sorted(los, reverse=True)

    # Ticked axes on the activation histogram, and the logit histogram with its marks.
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg#histogram .x-tick-label")) >= 2
    assert browser.find_elements(By.CSS_SELECTOR, "svg#histogram .y-tick-label")
    logit_ticks = browser.find_elements(By.CSS_SELECTOR, "svg#logit-histogram .x-tick-label")
    assert len(logit_ticks) >= 3 and any(t.text == "0" for t in logit_ticks)
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg#logit-histogram rect")) == 8
    assert browser.find_elements(By.CSS_SELECTOR, "svg#logit-histogram .mark-top")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "feature_page_artifact.png"))

    # The SAE page leaves it out of its strongest-first list until asked.
    browser.get(f"{flagged.url}/saes/{flagged.sae_id}")
    href = f"/saes/{flagged.sae_id}/features/{flagged.feature}"
    assert not browser.find_elements(By.CSS_SELECTOR, f'#features a[href="{href}"]')
    browser.find_element(By.LINK_TEXT, "show them").click()
    row = browser.find_element(By.CSS_SELECTOR, f'#features a[href="{href}"]')
    assert row.find_element(By.XPATH, "..").find_element(By.CLASS_NAME, "artifact")
