"""`saefeat steer` on the tiny Llama with an SAE checkpoint registered in a fresh home."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from saefeat.cli import app
from saefeat.config import get_settings
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.registry import register_sae

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path))
    get_settings.cache_clear()
    torch.manual_seed(0)
    path = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=4, hook=HOOK)).save(tmp_path / "sae")
    with catalog_session(get_settings()) as s:
        register_sae(s, sae_id="cli", name="cli", model_name=str(tiny_llama), hook_name=HOOK,
                     architecture="topk", d_in=64, d_sae=96, k=4,
                     checkpoint_path=str(path))  # fmt: skip
        s.commit()
    yield
    get_settings.cache_clear()


def test_steer_prints_both_continuations(home):
    args = ["steer", "--sae", "cli", "--prompt", "def f(x):", "--feature", "5:40",
            "--method", "clamp", "--max-new-tokens", "5"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "feature 5 promotes:" in result.stdout
    assert "--- default" in result.stdout and "--- steered" in result.stdout


@pytest.mark.parametrize(
    ("feature", "field"), [("5", "feature.0"), ("500:1", "features.0.index"), ("1:nan", "strength")]
)
def test_bad_feature_is_one_line_exit_2(home, feature, field):
    result = CliRunner().invoke(
        app, ["steer", "--sae", "cli", "--prompt", "x", "--feature", feature]
    )
    assert result.exit_code == 2
    assert field in result.output and "Traceback" not in result.output
