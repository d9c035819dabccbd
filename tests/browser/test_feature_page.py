"""Open a feature page in headless Chromium, label the feature, see the label appear."""

from __future__ import annotations

from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # kept by CI, gitignored


def test_label_a_feature_in_the_browser(served, browser):
    browser.get(f"{served.url}/saes/{served.sae_id}/features/{served.feature}")
    assert "Feature" in browser.find_element(By.TAG_NAME, "h1").text
    # The page shows highlighted examples, the histogram SVG, projections and neighbours.
    assert browser.find_elements(By.CSS_SELECTOR, "#top-examples .tok.focus")
    assert browser.find_elements(By.CSS_SELECTOR, "#quantile-examples .example")
    assert browser.find_elements(By.CSS_SELECTOR, "svg#histogram rect")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#projection-top tr")) == 8
    links = browser.find_elements(By.CSS_SELECTOR, "#neighbours a")
    assert links and "/features/" in links[0].get_attribute("href")

    browser.find_element(By.ID, "label-input").send_keys("closing brackets in code")
    browser.find_element(By.ID, "key-input").send_keys(served.label_key)
    browser.find_element(By.ID, "label-submit").click()
    wait = WebDriverWait(browser, 15)
    wait.until(ec.text_to_be_present_in_element((By.ID, "label-status"), "saved"))
    assert browser.find_element(By.ID, "label-text").text == "closing brackets in code"
    assert "closing brackets in code" in browser.find_element(By.ID, "label-history").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "feature_page.png"))

    # It was stored: a reload shows it, and the search page finds it.
    browser.refresh()
    assert browser.find_element(By.ID, "label-text").text == "closing brackets in code"
    browser.get(f"{served.url}/?q=bracket")
    result = browser.find_element(By.CSS_SELECTOR, "#results a")
    assert result.text == f"#{served.feature}"
    result.click()
    assert browser.current_url.endswith(f"/features/{served.feature}")


def test_wrong_key_shows_the_problem(served, browser):
    browser.get(f"{served.url}/saes/{served.sae_id}/features/{served.feature}")
    browser.find_element(By.ID, "label-input").send_keys("anything")
    browser.find_element(By.ID, "key-input").send_keys("sfk_wrong")
    browser.find_element(By.ID, "label-submit").click()
    WebDriverWait(browser, 15).until(
        ec.text_to_be_present_in_element((By.ID, "label-status"), "unknown or revoked")
    )
    assert "none yet" in browser.find_element(By.ID, "label-text").text
