"""The feature page's steering form in headless Chromium: fill it in, submit, see the
default and the steered continuation side by side (the tiny Llama and a real checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from saefeat.analysis.steer import DEFAULT_STRENGTH
from tests.browser.conftest import serve_in_thread

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # kept by CI, gitignored
HOOK = "blocks.2.hook_resid_post"


@pytest.fixture
def steerable_page(tmp_path, tiny_llama):
    from synthetic_catalog import synthetic_feature_index

    from saefeat.api.app import create_app
    from saefeat.config import Settings
    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.writer import write_feature_index

    torch.manual_seed(0)
    checkpoint = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=4, hook=HOOK)).save(tmp_path / "sae")
    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    app = create_app(settings)
    with app.state.sessionmaker() as session:
        register_sae(session, sae_id="tiny", name="tiny L2", model_name=str(tiny_llama),
                     hook_name=HOOK, architecture="topk", d_in=64, d_sae=96, k=4,
                     checkpoint_path=str(checkpoint))  # fmt: skip
        session.commit()
        write_feature_index(session, "tiny", synthetic_feature_index(96, n_examples=3, seed=2))
    with serve_in_thread(app) as url:
        yield f"{url}/saes/tiny/features/5"


def test_steer_from_the_feature_page(steerable_page, browser):
    browser.get(steerable_page)
    # The form says its unit, and suggests the default strength with clamp.
    assert "multiple of this feature's max activation" in browser.find_element(
        By.ID, "steer-units").text  # fmt: skip
    assert Select(browser.find_element(By.ID, "steer-method")).first_selected_option.text == "clamp"
    browser.find_element(By.ID, "steer-prompt").send_keys("def add(a, b):")
    Select(browser.find_element(By.ID, "steer-method")).select_by_value("clamp")
    strength = browser.find_element(By.ID, "steer-strength")
    assert float(strength.get_attribute("value")) == DEFAULT_STRENGTH
    strength.clear()
    strength.send_keys("3")
    tokens = browser.find_element(By.ID, "steer-tokens")
    tokens.clear()
    tokens.send_keys("8")
    browser.find_element(By.ID, "steer-submit").click()
    # The first request loads the model: allow for a slow, shared machine.
    WebDriverWait(browser, 120).until(
        ec.text_to_be_present_in_element((By.ID, "steer-status"), "done")
    )
    # 3 x feature 5's max activation, as the server applied it.
    assert "clamp at 3 × " in browser.find_element(By.ID, "steer-status").text
    default = browser.find_element(By.ID, "steer-default").text
    steered = browser.find_element(By.ID, "steer-steered").text
    assert default.startswith("def add(a, b):") and steered.startswith("def add(a, b):")
    assert len(default) > len("def add(a, b):") and len(steered) > len("def add(a, b):")
    assert "mean log-prob" in browser.find_element(By.ID, "steer-default-lp").text
    assert "mean log-prob" in browser.find_element(By.ID, "steer-steered-lp").text
    results = browser.find_element(By.ID, "steer-results")
    browser.execute_script("arguments[0].scrollIntoView();", results)
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "steer_widget.png"))


def test_bad_strength_shows_the_problem(steerable_page, browser):
    browser.get(steerable_page)
    browser.find_element(By.ID, "steer-prompt").send_keys("x")
    tokens = browser.find_element(By.ID, "steer-tokens")
    browser.execute_script("arguments[0].removeAttribute('max');", tokens)
    tokens.clear()
    tokens.send_keys("500")
    browser.find_element(By.ID, "steer-submit").click()
    WebDriverWait(browser, 30).until(
        ec.text_to_be_present_in_element((By.ID, "steer-status"), "max_new_tokens")
    )
