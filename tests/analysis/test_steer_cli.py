"""`saefeat steer` on the tiny Llama with an SAE checkpoint registered in a fresh home."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from saefeat.cli import app
from saefeat.config import get_settings
from saefeat.storage.catalog.db import catalog_session


@pytest.fixture
def home(tiny_sae_home):
    tiny_sae_home("cli")


def test_steer_prints_both_continuations(home):
    args = ["steer", "--sae", "cli", "--prompt", "def f(x):", "--feature", "5:40",
            "--method", "clamp", "--max-new-tokens", "5", "--units", "raw"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "feature 5: clamp 40" in result.stdout
    assert "feature 5 promotes:" in result.stdout
    assert "--- default" in result.stdout and "--- steered" in result.stdout


@pytest.mark.parametrize(
    ("feature", "field"), [("5", "feature.0"), ("500:1", "features.0.index"), ("1:nan", "strength")]
)
def test_bad_feature_is_one_line_exit_2(home, feature, field):
    result = CliRunner().invoke(
        app, ["steer", "--sae", "cli", "--prompt", "x", "--feature", feature, "--units", "raw"]
    )
    assert result.exit_code == 2
    assert field in result.output and "Traceback" not in result.output


def test_strength_is_a_multiple_of_the_max_activation_by_default(home):
    """Without --units the strength counts max activations: an SAE never indexed has
    none (exit 2 naming the field); indexed, 2 means 2 x max activation."""
    from synthetic_catalog import synthetic_feature_index

    from saefeat.storage.catalog.writer import write_feature_index

    args = ["steer", "--sae", "cli", "--prompt", "def f(x):", "--feature", "5:2",
            "--method", "clamp", "--max-new-tokens", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "features.0.strength" in result.output
    index = synthetic_feature_index(96, n_examples=2, n_quantile=0, seed=1)
    with catalog_session(get_settings()) as s:
        write_feature_index(s, "cli", index)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    m = float(index.max_activation[5])
    assert f"feature 5: clamp {2 * m:.4g} = 2 x max activation {m:.4g}" in result.stdout
