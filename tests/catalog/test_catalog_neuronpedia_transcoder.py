"""Neuronpedia export and import of a transcoder, and of SAEs on the MLP's input hooks: the
source set says what it is, and the round trip keeps both hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from synthetic_catalog import register_test_sae, synthetic_feature_index

from saefeat.storage.catalog import neuronpedia, neuronpedia_import, queries
from saefeat.storage.catalog.writer import write_feature_index

READ, WRITE = "blocks.6.ln2.hook_normalized", "blocks.6.hook_mlp_out"


def _indexed(session: Session, sae_id: str, **fields) -> None:
    register_test_sae(session, sae_id, 24, **fields)
    write_feature_index(session, sae_id, synthetic_feature_index(24, n_examples=2, seed=3))
    session.commit()


def _source(folder: Path) -> dict:
    return json.loads((folder / "source.jsonl").read_text())


def _rewrite_config(folder: Path, drop: tuple[str, ...] = (), drop_ours: bool = False) -> None:
    source = _source(folder)
    cfg = {k: v for k, v in source["saelensConfig"].items() if k not in drop}
    if drop_ours:
        cfg.pop("saefeat", None)
    (folder / "source.jsonl").write_text(json.dumps(source | {"saelensConfig": cfg}) + "\n")


def test_a_transcoder_exports_as_one_and_comes_back_with_its_output_hook(
    sqlite_session: Session, tmp_path
):
    _indexed(sqlite_session, "tc", hook_name=READ, hook_out_name=WRITE)
    folder = neuronpedia.export_neuronpedia(sqlite_session, "tc", tmp_path / "out")
    assert folder.name == "6-saefeat-transcoder-24"
    cfg = _source(folder)["saelensConfig"]
    assert (cfg["hook_name"], cfg["hook_name_out"], cfg["hook_layer_out"]) == (READ, WRITE, 6)
    assert cfg["d_out"] == cfg["d_in"] and cfg["saefeat"]["hook_out"] == WRITE
    description = json.loads((folder / "sourceset.jsonl").read_text())["description"]
    assert description == f"transcoder {READ} -> {WRITE} - 24 (topk)"

    neuronpedia_import.import_neuronpedia(sqlite_session, folder, "tc-back")
    back = queries.get_sae(sqlite_session, "tc-back")
    assert (back.hook_name, back.hook_out_name) == (READ, WRITE)


@pytest.mark.parametrize(
    ("drop", "drop_ours"),
    [
        (("hook_name_out",), False),  # our record alone
        ((), True),  # SAELens's hook_name_out alone
        (("hook_name", "hook_name_out"), True),  # only the source set's name: transcoder
    ],
)
def test_import_finds_the_output_hook_in_what_a_folder_holds(
    sqlite_session: Session, tmp_path, drop, drop_ours
):
    _indexed(sqlite_session, "tc", hook_name=READ, hook_out_name=WRITE)
    folder = neuronpedia.export_neuronpedia(sqlite_session, "tc", tmp_path / "out")
    _rewrite_config(folder, drop, drop_ours)
    neuronpedia_import.import_neuronpedia(sqlite_session, folder, "tc-back")
    back = queries.get_sae(sqlite_session, "tc-back")
    assert (back.hook_name, back.hook_out_name) == (READ, WRITE)


@pytest.mark.parametrize(
    ("hook", "set_word"),
    [("blocks.6.ln2.hook_normalized", "ln2"), ("blocks.6.hook_mlp_in", "res-mid"),
     ("blocks.6.hook_mlp_out", "mlp"), ("blocks.6.hook_resid_pre", "res-pre")],
)  # fmt: skip
def test_an_sae_on_any_hook_exports_and_comes_back_as_an_sae(
    sqlite_session: Session, tmp_path, hook, set_word
):
    _indexed(sqlite_session, "sae", hook_name=hook)
    folder = neuronpedia.export_neuronpedia(sqlite_session, "sae", tmp_path / "out")
    assert folder.name == f"6-saefeat-{set_word}-24"
    assert "hook_name_out" not in _source(folder)["saelensConfig"]
    _rewrite_config(folder, ("hook_name",), drop_ours=True)  # the hook from the set's name
    neuronpedia_import.import_neuronpedia(sqlite_session, folder, "back")
    back = queries.get_sae(sqlite_session, "back")
    assert (back.hook_name, back.hook_out_name) == (hook, None)
