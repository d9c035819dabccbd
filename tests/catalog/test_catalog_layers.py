"""Layers that hold: importing the catalog loads no torch (the CLI and Alembic's env.py
import it), and a top example has one shape from the writer to the API, the page's
script and the Neuronpedia export."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import get_args

from saefeat.features.records import ExampleKind, FeatureExample
from saefeat.storage.catalog.models import EXAMPLE_KINDS, FeatureExampleRow

CATALOG_MODULES = (
    "saefeat.storage.catalog",
    "saefeat.storage.catalog.db",
    "saefeat.storage.catalog.models",
    "saefeat.storage.catalog.queries",
    "saefeat.storage.catalog.registry",
    "saefeat.storage.catalog.neuronpedia",
    "saefeat.storage.catalog.neuronpedia_import",
    "saefeat.storage.catalog.documents",
    "saefeat.storage.catalog.writer",
)
HEAVY = ("torch", "transformers", "zarr", "ray", "saefeat.sae", "saefeat.lm", "saefeat.kernels")


def test_importing_the_catalog_loads_no_torch():
    code = (
        "import importlib, sys\n"
        f"for name in {CATALOG_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_migrating_loads_no_torch(tmp_path):
    """Alembic's env.py and every revision run without torch (a fresh schema, upgraded)."""
    code = (
        "import sys\n"
        "from saefeat.storage.catalog.db import upgrade\n"
        f"upgrade({'sqlite:///' + str(tmp_path / 'catalog.db')!r})\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_the_example_record_is_the_table_and_the_api_schema():
    record = [f.name for f in fields(FeatureExample)]
    columns = [c.name for c in FeatureExampleRow.__table__.columns]
    # The table holds the record (feature_index as its feature's id) and its own key.
    assert set(columns) - {"id", "feature_id"} == set(record) - {"feature_index"}
    assert set(get_args(ExampleKind)) == set(EXAMPLE_KINDS)

    from saefeat.api.schemas import FeatureDetail

    item = FeatureDetail.model_json_schema()["$defs"]["FeatureExample"]
    assert list(item["properties"]) == record
    assert set(item["required"]) == set(record) - {"kind"}


def test_the_page_script_reads_the_record():
    script = (Path(__file__).parents[2] / "saefeat" / "api" / "static" / "feature.js").read_text()
    for name in ("token_strs", "values", "focus", "activation", "kind"):
        assert f"example.{name}" in script or f"e.{name}" in script, name
    assert "example.tokens" not in script


def test_the_neuronpedia_side_record_carries_what_activation_rows_do_not():
    from saefeat.storage.catalog.neuronpedia import ACTIVATION_HOLDS, EXAMPLE_SIDE_FIELDS

    record = {f.name for f in fields(FeatureExample)}
    assert set(EXAMPLE_SIDE_FIELDS) | set(ACTIVATION_HOLDS) == record
