"""The SAE page, the jobs page and the "which features fire on my text" box in headless
Chromium, against the real app (uvicorn in a thread) with a real SAE on the tiny Llama.
Screenshots go to artifacts/ for review."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import Served, serve_in_thread
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from synthetic_catalog import synthetic_feature_index

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"  # kept by CI, gitignored
HOOK = "blocks.1.hook_resid_post"
D_SAE = 40


@pytest.fixture
def service(tmp_path, tiny_llama) -> Iterator[Served]:
    from saefeat.api.app import create_app
    from saefeat.config import Settings
    from saefeat.sae import SAEConfig
    from saefeat.sae.base import sae_class
    from saefeat.storage.catalog.models import Job, utcnow
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.writer import write_feature_index
    from saefeat.training.evaluate import DENSITY_BINS

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    cfg = SAEConfig(d_in=64, d_sae=D_SAE, architecture="topk", k=4, model=str(tiny_llama),
                    hook=HOOK)  # fmt: skip
    sae = sae_class("topk")(cfg)
    sae.init_weights(1.0)
    checkpoint = sae.save(tmp_path / "saes" / "sae-tiny")
    index = synthetic_feature_index(D_SAE, n_examples=3, n_quantile=2, seed=3)
    counts, _ = np.histogram(index.density, bins=DENSITY_BINS)
    metrics = {
        "fvu": 0.123,
        "l0": 4.0,
        "dead_frac": 0.05,
        "mse": 0.01,
        "density_histogram": {"edges": DENSITY_BINS.tolist(), "counts": counts.tolist()},
    }
    app = create_app(settings)
    with app.state.sessionmaker() as s:
        register_sae(s, sae_id="sae-tiny", name="tiny L1 topk-40", model_name=str(tiny_llama),
                     hook_name=HOOK, architecture="topk", d_in=64, d_sae=D_SAE, k=4,
                     cfg={"train_spec": {"activation_set": "as-0123456789abcdef", "k": 4,
                                         "d_sae": D_SAE, "architecture": "topk"}},
                     metrics=metrics, checkpoint_path=str(checkpoint))  # fmt: skip
        s.commit()
        write_feature_index(s, "sae-tiny", index)
        # A pipeline another runner holds (so this server leaves it be), and a stage of it.
        pipeline = {
            "stages": ["harvest", "train", "index"],
            "harvest": {
                "model": str(tiny_llama),
                "hooks": [HOOK],
                "ctx_len": 16,
                "token_budget": 512,
            },
            "train": {"d_sae": D_SAE, "k": 4},
        }
        from saefeat.specs import PipelineSpec
        from saefeat.workers.pipeline_job import pipeline_hash, plan

        spec = PipelineSpec.model_validate(pipeline)
        (_, harvest), _, _ = plan(spec)
        s.add(Job(kind="harvest", spec=harvest.model_dump(mode="json"),
                  spec_hash=harvest.set_id(), status="succeeded", progress_done=512,
                  progress_total=512))  # fmt: skip
        s.add(Job(kind="pipeline", spec=spec.model_dump(mode="json"),
                  spec_hash=pipeline_hash(spec), status="running", progress_done=1,
                  progress_total=3, rate=0.02, owner="elsewhere",
                  lease_expires_at=utcnow() + timedelta(days=1)))  # fmt: skip
        s.commit()
    with serve_in_thread(app) as url:
        yield Served(url, "", "sae-tiny", 0)


def test_sae_page(service, browser):
    browser.get(f"{service.url}/saes/{service.sae_id}")
    assert browser.find_element(By.ID, "sae-name").text == "tiny L1 topk-40"
    lineage = browser.find_element(By.ID, "lineage").text
    assert HOOK in lineage and "tiny-llama" in lineage
    assert "0.123" in browser.find_element(By.ID, "metrics").text
    bars = browser.find_elements(By.CSS_SELECTOR, "#density svg.chart rect")
    assert len(bars) == len(np.concatenate([[0.0], np.logspace(-7, 0, 29)])) - 1
    rows = browser.find_elements(By.CSS_SELECTOR, "#features tr")
    assert len(rows) == D_SAE + 1  # a header and each feature
    assert browser.find_elements(By.CSS_SELECTOR, "#features svg.spark polyline")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "sae_page.png"))
    rows[1].find_element(By.TAG_NAME, "a").click()
    assert "/saes/sae-tiny/features/" in browser.current_url


def test_jobs_page(service, browser):
    browser.get(f"{service.url}/jobs")
    wait = WebDriverWait(browser, 15)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#jobs tbody tr[id^=job-]")))
    text = browser.find_element(By.ID, "jobs").text
    assert "pipeline" in text and "running" in text and "harvest: succeeded" in text
    assert "train: pending" in text and "index: pending" in text
    assert "no API key" in browser.find_element(By.ID, "scope-note").text
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "jobs_page.png"))


def test_which_features_fire_on_my_text(service, browser):
    browser.get(service.url)
    box = browser.find_element(By.ID, "fire-text")
    box.clear()
    box.send_keys("def add(a, b): return a + b")
    browser.find_element(By.ID, "fire-run").click()
    wait = WebDriverWait(browser, 120)  # the first run loads the model
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#fire-table a")))
    assert browser.find_elements(By.CSS_SELECTOR, "#fire-out .tok")
    link = browser.find_element(By.CSS_SELECTOR, "#fire-table a")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "fire_box.png"))
    link.click()
    assert "/saes/sae-tiny/features/" in browser.current_url
