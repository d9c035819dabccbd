"""The `saefeat features ...` commands over a seeded SQLite catalog."""

from __future__ import annotations

import pytest
from synthetic_catalog import synthetic_feature_index
from typer.testing import CliRunner

from saefeat.cli import app
from saefeat.config import get_settings
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.writer import write_feature_index


@pytest.fixture
def home(tmp_path, monkeypatch, make_sae):
    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path))
    get_settings.cache_clear()
    with catalog_session(get_settings()) as s:
        make_sae(s, d_sae=20)
        index = synthetic_feature_index(20, seed=9)
        write_feature_index(s, "sae-a", index)
        add_label(s, get_feature(s, "sae-a", 3), text="closing brackets")
        s.commit()
    yield index
    get_settings.cache_clear()


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_features_list_labelled_and_search(home):
    listed = _run("features", "list", "--sae", "sae-a", "--labelled")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.strip().split("\t")[1] == "3"
    assert "closing brackets" in listed.stdout
    unlabelled = _run("features", "list", "--sae", "sae-a", "--unlabelled", "--limit", "100")
    assert len(unlabelled.stdout.strip().splitlines()) == 19
    found = _run("features", "search", "--label", "bracket")
    assert found.exit_code == 0 and found.stdout.split("\t")[1] == "3"
    near = _run("features", "neighbours", "--sae", "sae-a", "--index", "3")
    indices = [int(line.split("\t")[1]) for line in near.stdout.strip().splitlines()]
    assert indices == home.neighbour_indices[3].tolist()


def test_bad_input_is_one_line_exit_2(home):
    bad = _run("features", "search", "--label", '"open')
    assert bad.exit_code == 2 and "unclosed quote" in bad.output
    assert _run("features", "list", "--sae", "nope").exit_code == 2
    assert _run("features", "search").exit_code == 2
