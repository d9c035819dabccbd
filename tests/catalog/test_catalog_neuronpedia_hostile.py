"""`saefeat import` of a hostile Neuronpedia folder: links, gzip bombs and impossible
fields are one line naming the field, exit code 2, and nothing stored."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tracemalloc
import zlib
from pathlib import Path

import pytest
from sqlalchemy import func, select
from synthetic_catalog import synthetic_effects, synthetic_feature_index
from typer.testing import CliRunner

from saefeat.cli import app
from saefeat.config import get_settings
from saefeat.errors import SpecError
from saefeat.storage.catalog import neuronpedia, neuronpedia_import
from saefeat.storage.catalog.db import catalog_session, make_engine, make_sessionmaker
from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.models import SAE, Feature, Label
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.writer import write_feature_index

SECRET = "root:x:0:0:the-secret-line-of-a-file-outside\n"


@pytest.fixture
def home(tmp_path, monkeypatch, make_sae):
    """A saefeat home whose catalog holds SAE sae-a (12 features, labels, side records)."""
    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(neuronpedia, "BATCH", 5)  # three batch files
    get_settings.cache_clear()
    with catalog_session(get_settings()) as s:
        make_sae(s, d_sae=12)
        write_feature_index(s, "sae-a", synthetic_effects(synthetic_feature_index(12, seed=1)))
        add_label(s, get_feature(s, "sae-a", 3), text="brackets", author="ada")
        s.commit()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def export(home) -> Path:
    """A good export of sae-a: the source folder (below <home>/np/<model>/)."""
    with catalog_session(get_settings()) as s:
        return neuronpedia.export_neuronpedia(s, "sae-a", home / "np")


def _counts() -> tuple[int, int, int]:
    with catalog_session(get_settings()) as s:
        return tuple(s.scalar(select(func.count()).select_from(m)) for m in (SAE, Feature, Label))


def _read(path: Path) -> list[dict]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.splitlines()]


def _write(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    path.write_bytes(gzip.compress(text) if path.suffix == ".gz" else text)


def _refused(home: Path, field: str, *, folder: Path | None = None) -> str:
    """Import <home>/np (or `folder`): exit 2, one line `error: <field>: ...`, the catalog
    unchanged. The output, for more checks."""
    before = _counts()
    run = CliRunner().invoke(app, ["import", str(folder or home / "np"), "--id", "back"])
    lines = [line for line in run.output.splitlines() if line.strip()]
    assert run.exit_code == 2, run.output
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), run.output
    assert _counts() == before
    return run.output


def test_a_good_export_imports_and_so_does_a_link_the_user_named(home, export):
    link = home / "named-link"
    link.symlink_to(home / "np", target_is_directory=True)  # the folder the user typed
    run = CliRunner().invoke(app, ["import", str(link), "--id", "back"])
    assert run.exit_code == 0, run.output
    assert "12 features" in run.output and "1 labels" in run.output


@pytest.mark.parametrize("where", ["features/batch-1.jsonl.gz", "source.jsonl", "model.jsonl"])
def test_a_link_to_a_file_outside_is_refused_without_reading_it(home, export, where):
    secret = home / "outside.txt"
    secret.write_text(SECRET)
    (export / where).unlink()
    (export / where).symlink_to(secret)
    out = _refused(home, "path")
    assert "symbolic link" in out and where in out
    # the old message quoted the first bytes gzip found: "Not a gzipped file (b'ro')"
    assert SECRET[:2] not in out.replace("error", "") and "secret" not in out


@pytest.mark.parametrize("link", ["features", "model-folder"])
def test_a_linked_folder_inside_is_refused(home, export, link):
    elsewhere = home / "elsewhere"
    if link == "features":
        shutil.move(export / "features", elsewhere)
        (export / "features").symlink_to(elsewhere, target_is_directory=True)
        name = "features"
    else:  # <np>/<model> links to a folder outside
        shutil.move(export.parent, elsewhere)
        export.parent.symlink_to(elsewhere, target_is_directory=True)
        name = export.parent.name
    out = _refused(home, "path")
    assert "link" in out and name in out


def test_a_file_that_is_not_gzip_is_named_not_quoted(home, export):
    (export / "features" / "batch-1.jsonl.gz").write_text(SECRET)
    out = _refused(home, "path")
    assert "features/batch-1.jsonl.gz" in out and "gzip" in out
    assert "b'ro'" not in out and "secret" not in out


def _bomb(path: Path, n_bytes: int, *, newlines: bool = False) -> None:
    """A gzip file of `n_bytes` of JSON-ish text, compressed as a stream (never held)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header
    chunk = (b" " * 1021 + b"{}\n") if newlines else b"0" * 1024  # lines of valid JSON
    with path.open("wb") as f:
        for _ in range(n_bytes // len(chunk)):
            f.write(z.compress(chunk))
        f.write(z.flush())


@pytest.mark.parametrize(("cap", "newlines", "says"), [
    ("MAX_LINE_BYTES", False, "a line is longer than 65,536 bytes"),
    ("MAX_FILE_BYTES", True, "holds more than 65,536 bytes"),
    ("MAX_FOLDER_BYTES", True, "the folder holds more than 65,536 bytes"),
])  # fmt: skip
def test_a_gzip_bomb_stops_at_the_cap(home, export, monkeypatch, cap, newlines, says):
    monkeypatch.setattr(neuronpedia_import, cap, 2**16)
    _bomb(export / "activations" / "batch-0.jsonl.gz", 2**20, newlines=newlines)
    out = _refused(home, "path")
    assert says in out and ("activations/batch-0.jsonl.gz" in out)


def test_a_real_bomb_line_is_refused_in_bounded_memory(tmp_path, sqlite_template):
    """200 MiB of one line in a 200 KB file: refused at the default line cap (16 MiB)
    with far less memory than the line (gzip.decompress held it all, then a copy)."""
    folder = tmp_path / "np"
    (folder / "features").mkdir(parents=True)
    _write(folder / "source.jsonl", [{"id": "6-x-res-4", "saelensConfig": {"d_sae": 4}}])
    _bomb(folder / "features" / "batch-0.jsonl.gz", 200 * 2**20)
    assert (folder / "features" / "batch-0.jsonl.gz").stat().st_size < 2**20
    db = tmp_path / "fresh.db"
    shutil.copyfile(sqlite_template, db)
    engine = make_engine(f"sqlite:///{db}")
    tracemalloc.start()
    try:
        with make_sessionmaker(engine)() as s, pytest.raises(SpecError) as err:
            neuronpedia_import.import_neuronpedia(s, folder, "bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        engine.dispose()
    assert "a line is longer than" in str(err.value) and err.value.field == "path"
    assert peak < 3 * neuronpedia_import.MAX_LINE_BYTES, peak


def _source_cfg(export: Path, **cfg) -> None:
    rows = _read(export / "source.jsonl")
    rows[0]["saelensConfig"] = {**rows[0]["saelensConfig"], **cfg}
    _write(export / "source.jsonl", rows)


def test_a_d_sae_of_a_trillion_is_refused(home, export):
    _source_cfg(export, d_sae=10**12)
    out = _refused(home, "d_sae")
    assert "1000000000000" in out and f"{neuronpedia_import.MAX_D_SAE:,}" in out


def test_without_d_sae_a_trillionth_index_is_refused(home, export):
    rows = _read(export / "source.jsonl")
    del rows[0]["saelensConfig"]["d_sae"]
    _write(export / "source.jsonl", rows)
    path = export / "features" / "batch-2.jsonl.gz"
    neurons = _read(path)
    neurons[-1]["index"] = str(10**12)
    _write(path, neurons)
    assert "batch-2.jsonl.gz" in _refused(home, "index")


@pytest.mark.parametrize("sub", ["features", "saefeat"])
def test_a_feature_given_twice_is_refused(home, export, sub):
    first, last = (export / sub / f"batch-{n}.jsonl.gz" for n in (0, 2))
    rows = _read(last)
    rows.append({**_read(first)[1]})  # feature 1 again, in another file
    _write(last, rows)
    out = _refused(home, "index")
    assert "index 1 appears a second time" in out or "a second side record of feature 1" in out


@pytest.mark.parametrize("sub", ["features", "activations", "explanations", "saefeat"])
def test_an_index_at_or_past_d_sae_is_refused(home, export, sub):
    path = sorted((export / sub).glob("batch-*.jsonl.gz"))[-1]
    rows = _read(path)
    rows[-1]["index"] = "12"  # d_sae is 12
    _write(path, rows)
    assert "index 12 is outside 0..11" in _refused(home, "index")


@pytest.mark.parametrize(("sub", "damage", "field"), [
    ("features", [1, 2], "path"),  # a line that is no object
    ("features", {"index": 2.5}, "index"),
    ("features", {"index": True}, "index"),
    ("features", {"index": ["1"]}, "index"),
    ("features", {"frac_nonzero": "lots"}, "frac_nonzero"),
    ("features", {"frac_nonzero": float("nan")}, "frac_nonzero"),
    ("features", {"pos_str": "abc"}, "pos_str"),
    ("features", {"topkCosSimIndices": [[1]]}, "topkCosSimIndices"),
    ("features", {"topkCosSimValues": [0.5] * 99}, "topkCosSimValues"),
    ("features", {"freq_hist_data_bar_values": [1.0] * 99}, "freq_hist_data_bar_heights"),
    ("activations", {"tokens": "abc"}, "tokens"),
    ("activations", {"id": ["unhashable"]}, "id"),
    ("activations", {"values": {"a": 1}}, "values"),
    ("activations", {"tokens": ["a"] * 5000}, "tokens"),  # a list past MAX_LIST_ITEMS
    ("explanations", {"description": "a\x00b"}, "path"),  # NUL: PostgreSQL cannot hold it
    ("explanations", {"explanationModelName": "x\x00"}, "path"),
    ("explanations", {"description": 7}, "description"),
    ("explanations", {"id": {"a": 1}}, "id"),
    ("explanations", {"id": "no-side-label", "explanationModelName": ["x"]}, "author"),
    ("saefeat", {"histogram": {"edges": [0, 1], "counts": [1, 2, 3]}}, "histogram"),
    ("saefeat", {"examples": [1, 2]}, "examples"),
    ("saefeat", {"mean_activation": "high"}, "mean_activation"),
    ("saefeat", {"pos_ids": [1.5]}, "pos_ids"),
    ("source", {"saelensConfig": {"d_in": 2**40}}, "d_in"),
    ("source", {"saelensConfig": {"hook_name": ["x"]}}, "hook_name"),
    ("source", {"saelensConfig": {"saefeat": "x"}}, "saefeat"),
])  # fmt: skip
def test_a_field_of_the_wrong_type_is_one_line_naming_it(home, export, sub, damage, field):
    if sub == "source":
        _source_cfg(export, **damage["saelensConfig"])
    else:
        path = sorted((export / sub).glob("batch-*.jsonl.gz"))[0]
        rows = _read(path)
        rows[0] = damage if isinstance(damage, list) else {**rows[0], **damage}
        _write(path, rows)
    _refused(home, field)


@pytest.mark.parametrize("line", [
    b"{not json", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000,
    b'{"index": 1' + b"0" * 5000 + b"}",
])  # fmt: skip
def test_an_unparseable_line_is_named_not_quoted(home, export, line):
    path = export / "explanations" / "batch-0.jsonl.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + line + b"\n"))
    out = _refused(home, "path")
    assert "explanations/batch-0.jsonl.gz:" in out
    assert "not json" not in out and "\ufffd" not in out and "0000" not in out


def test_nothing_but_folders_and_files_is_read(home, export):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(export / "features" / "batch-9.jsonl.gz")  # opening it would block
    assert "not a regular file" in _refused(home, "path")


@pytest.mark.parametrize("score", [1e308, -2.0, "high"])
def test_a_label_score_out_of_the_catalogs_range_is_refused(home, export, score):
    for path in sorted((export / "saefeat").glob("batch-*.jsonl.gz")):
        rows = _read(path)
        with_labels = [r for r in rows if r.get("labels")]
        if with_labels:
            with_labels[0]["labels"][0]["score"] = score
            _write(path, rows)
            break
    else:
        pytest.fail("the export has no side label")
    assert "score is" in _refused(home, "score")
