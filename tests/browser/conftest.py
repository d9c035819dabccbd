"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, against
the real app served by uvicorn on 127.0.0.1 in a thread."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ports import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@dataclass
class Served:
    url: str
    label_key: str
    sae_id: str
    feature: int


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(tmp_path) -> Iterator[Served]:
    from synthetic_catalog import synthetic_feature_index

    from saefeat.api.app import create_app
    from saefeat.config import Settings
    from saefeat.storage.catalog.keys import create_api_key
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.writer import write_feature_index

    settings = Settings(home=tmp_path, database_url=f"sqlite:///{tmp_path / 'catalog.db'}")
    app = create_app(settings)
    with app.state.sessionmaker() as session:
        register_sae(session, sae_id="sae-a", name="SmolLM2 L6 demo",
                     model_name="SmolLM2-135M-Instruct", hook_name="blocks.6.hook_resid_post",
                     architecture="topk", d_in=576, d_sae=40, k=8)  # fmt: skip
        session.commit()
        index = synthetic_feature_index(40, n_examples=5, n_quantile=3, seed=7)
        write_feature_index(session, "sae-a", index)
        key = create_api_key(session, "browser-test", ["label"])
        session.commit()
    feature = next(i for i in range(40) if index.density[i] > 0)
    with serve_in_thread(app) as url:
        yield Served(url, key, "sae-a", feature)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Chromium is not installed: apt-get install chromium chromium-driver "
            f"(looked for {CHROMIUM} and {CHROMEDRIVER})"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
