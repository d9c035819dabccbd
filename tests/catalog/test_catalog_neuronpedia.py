"""Neuronpedia export and import: the layout and field names of Neuronpedia's own exporter,
and a round trip into a fresh catalog."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session
from synthetic_catalog import synthetic_effects, synthetic_feature_index

from saefeat.errors import SpecError
from saefeat.storage.catalog import feature_reads as reads
from saefeat.storage.catalog import neuronpedia, neuronpedia_import, queries
from saefeat.storage.catalog.db import make_engine, make_sessionmaker
from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.models import SAE, Feature, Label
from saefeat.storage.catalog.writer import write_feature_index

# Scalar and list fields of Neuronpedia's Neuron, Activation and Explanation models (the
# relation fields left out), copied from apps/webapp/prisma/schema.prisma in
# hijohnnylin/neuronpedia.
PRISMA_NEURON = {
    "modelId", "layer", "index", "sourceSetName", "creatorId", "createdAt", "maxActApprox",
    "hasVector", "vector", "vectorLabel", "vectorDefaultSteerStrength", "hookName",
    "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
    "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
    "correlated_neurons_pearson", "correlated_neurons_l1", "correlated_features_indices",
    "correlated_features_pearson", "correlated_features_l1", "neg_str", "neg_values", "pos_str",
    "pos_values", "frac_nonzero", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist",
    "umap_cluster", "umap_log_feature_sparsity", "umap_x", "umap_y",
}  # fmt: skip
PRISMA_ACTIVATION = {
    "id", "tokens", "dataIndex", "index", "layer", "modelId", "dataSource", "maxValue",
    "maxValueTokenIndex", "minValue", "values", "dfaValues", "dfaTargetIndex", "dfaMaxValue",
    "zQIndices", "zKIndices", "zValues", "creatorId", "createdAt", "lossValues",
    "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex",
}  # fmt: skip
PRISMA_EXPLANATION = {
    "id", "modelId", "layer", "index", "embedding", "description", "authorId",
    "triggeredByUserId", "notes", "scoreV1", "scoreV2", "umap_x", "umap_y", "umap_cluster",
    "umap_log_feature_sparsity", "typeName", "explanationModelName", "createdAt", "updatedAt",
}  # fmt: skip
# The columns Neuronpedia's exporter (utils/neuronpedia-utils/neuronpedia_utils/
# export-data.py) selects for each table: an export has these keys, no more, no fewer.
EXPORTER_NEURON = 29
EXPORTER_ACTIVATION = 17
EXPORTER_EXPLANATION = 13


@pytest.fixture
def indexed(session: Session, make_sae, monkeypatch):
    monkeypatch.setattr(neuronpedia, "BATCH", 16)  # several batch files for 40 features
    make_sae(session, d_sae=40)
    index = synthetic_effects(synthetic_feature_index(40, n_examples=3, n_quantile=2, seed=5))
    write_feature_index(session, "sae-a", index)
    f3 = queries.get_feature(session, "sae-a", 3)
    add_label(session, f3, text="closing brackets", author="ada")
    add_label(session, f3, text="brackets, auto", source="auto", author="explainer", score=0.7)
    add_label(session, queries.get_feature(session, "sae-a", 30), text="imports", author="bob")
    session.commit()
    return index


@pytest.fixture
def fresh(tmp_path, sqlite_template):
    path = tmp_path / "fresh.db"
    shutil.copyfile(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


def _rows(folder: Path, sub: str) -> list[dict]:
    out = []
    for f in sorted((folder / sub).glob("batch-*.jsonl.gz")):
        out += [json.loads(line) for line in gzip.decompress(f.read_bytes()).splitlines()]
    return out


def test_layout_and_fields_are_neuronpedias(session, indexed, tmp_path):
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    assert folder == tmp_path / "out" / "smollm2-135m-instruct" / "6-saefeat-res-40"
    for name in ("model.jsonl", "release.jsonl", "sourceset.jsonl", "source.jsonl"):
        assert len((folder / name).read_text().splitlines()) == 1
    assert len(list((folder / "explanations").iterdir())) == 1  # 3 labels: one batch
    assert sorted(p.name for p in (folder / "features").iterdir()) == [
        "batch-0.jsonl.gz", "batch-1.jsonl.gz", "batch-2.jsonl.gz"]  # fmt: skip
    neurons, acts, expl = (_rows(folder, s) for s in ("features", "activations", "explanations"))
    assert len(neurons) == 40 and [n["index"] for n in neurons] == [str(i) for i in range(40)]
    for rows, prisma, n_fields in ((neurons, PRISMA_NEURON, EXPORTER_NEURON),
                                   (acts, PRISMA_ACTIVATION, EXPORTER_ACTIVATION),
                                   (expl, PRISMA_EXPLANATION, EXPORTER_EXPLANATION)):  # fmt: skip
        for row in rows:
            assert set(row) <= prisma, set(row) - prisma
            assert len(row) == n_fields
    assert set(neurons[0]) == set(neuronpedia.NEURON_FIELDS)
    assert set(acts[0]) == set(neuronpedia.ACTIVATION_FIELDS)
    assert set(expl[0]) == set(neuronpedia.EXPLANATION_FIELDS)
    source = json.loads((folder / "source.jsonl").read_text())
    assert {r["layer"] for r in neurons + acts + expl} == {source["id"]}
    assert source["saelensConfig"]["hook_name"] == "blocks.6.hook_resid_post"
    # Neuronpedia marks top examples with binMin = -1; quantile samples carry their slice.
    top = [a for a in acts if a["binMin"] == -1]
    assert len(top) == 3 * int((indexed.density > 0).sum())
    assert all(0 <= a["binMin"] < a["binMax"] for a in acts if a["binMin"] != -1)
    assert sorted(e["description"] for e in expl) == [
        "brackets, auto", "closing brackets", "imports"]  # fmt: skip
    with pytest.raises(SpecError) as err:  # never writes over an export
        neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    assert err.value.field == "out"


def test_a_batch_reads_in_a_constant_number_of_queries(session, make_sae, tmp_path):
    """A batch's features, examples, projections and neighbours are read for all its ids
    at once: three times the features (still one batch) run the same statements."""
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    counts = {}
    for sae_id, d_sae in (("small", 8), ("large", 24)):
        make_sae(session, d_sae=d_sae, sae_id=sae_id)
        index = synthetic_feature_index(d_sae, n_examples=3, n_quantile=2, dead_fraction=0, seed=2)
        write_feature_index(session, sae_id, index)
        add_label(session, queries.get_feature(session, sae_id, 1), text="a label", author="ada")
        session.commit()
        event.listen(session.get_bind(), "before_cursor_execute", count)
        try:
            neuronpedia.export_neuronpedia(session, sae_id, tmp_path / sae_id)
        finally:
            event.remove(session.get_bind(), "before_cursor_execute", count)
        counts[sae_id], statements[:] = len(statements), []
    assert counts["large"] == counts["small"], counts


def test_batched_reads_equal_the_per_feature_ones(session, indexed):
    ids = list(session.scalars(select(Feature.id).order_by(Feature.index)))
    ids = ids[::-1] + [10**9]  # any order; an id with no rows gets empty lists
    examples = reads.feature_examples_many(session, ids)
    projections = reads.feature_projection_many(session, ids)
    neighbours = reads.feature_neighbours_many(session, ids)
    assert any(examples.values()) and not all(examples.values())  # dead features too
    assert any(neighbours.values()) and any(p["top"] for p in projections.values())
    for fid in ids:
        assert examples[fid] == reads.feature_examples(session, fid)
        assert projections[fid] == reads.feature_projection(session, fid)
        assert neighbours[fid] == reads.feature_neighbours(session, fid)


def _snapshot(s: Session, sae_id: str):
    features = s.execute(
        select(Feature.id, Feature.index, Feature.density, Feature.max_activation,
               Feature.mean_activation, Feature.histogram)
        .where(Feature.sae_id == sae_id).order_by(Feature.index)
    ).all()  # fmt: skip
    out = []
    for fid, *cols in features:
        examples = [tuple(vars_(e)) for e in reads.feature_examples(s, fid)]
        projection = {k: [(p.rank, p.token_id, p.token_str, p.value) for p in v]
                      for k, v in reads.feature_projection(s, fid).items()}  # fmt: skip
        near = [(n.feature.index, n.rank, n.cosine) for n in reads.feature_neighbours(s, fid)]
        effects = {m: {side: [vars_(e) for e in entries] for side, entries in sides.items()}
                   for m, sides in reads.feature_effects(s, fid).items()}  # fmt: skip
        labels = s.execute(select(Label.text, Label.source, Label.author, Label.score,
                                  Label.created_at)
                           .where(Label.feature_id == fid).order_by(Label.id)).all()  # fmt: skip
        out.append((tuple(cols), examples, projection, near, effects,
                    [tuple(lb) for lb in labels]))  # fmt: skip
    return out


def vars_(row):
    return [getattr(row, f) for f in row.__slots__]


def test_round_trip_into_a_fresh_catalog(session, indexed, fresh, tmp_path):
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    done = neuronpedia_import.import_neuronpedia(fresh, tmp_path / "out", "copy")
    assert (done.n_features, done.n_labels) == (40, 3)
    assert done.n_examples == 5 * int((indexed.density > 0).sum())
    copy = fresh.get(SAE, "copy")
    assert (copy.hook_name, copy.d_in, copy.d_sae, copy.architecture, copy.k) == (
        "blocks.6.hook_resid_post", 576, 40, "topk", 8)  # fmt: skip
    got, want = _snapshot(fresh, "copy"), _snapshot(session, "sae-a")
    for g, w in zip(got, want, strict=True):
        for part_g, part_w in zip(g, w, strict=True):
            assert part_g == part_w
    assert neuronpedia_import.is_neuronpedia_folder(folder)


def test_a_folder_without_our_side_files_imports_from_the_records(session, indexed, fresh,
                                                                  tmp_path):  # fmt: skip
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    shutil.rmtree(folder / "saefeat")  # as Neuronpedia itself exports it
    done = neuronpedia_import.import_neuronpedia(fresh, folder, "np")
    assert done.n_features == 40 and done.n_labels == 3
    original = queries.get_feature(session, "sae-a", 3)
    f = queries.get_feature(fresh, "np", 3)
    assert (f.density, f.max_activation) == (original.density, original.max_activation)
    ex = reads.feature_examples(fresh, f.id)
    assert [e.kind for e in ex].count("top") == 3 and [e.kind for e in ex].count("quantile") == 2
    top_ranks = [e.rank for e in ex if e.kind == "top"]
    assert top_ranks == [0, 1, 2]
    want = [e.token_strs for e in reads.feature_examples(session, original.id)]
    assert sorted(e.token_strs for e in ex) == sorted(want)
    projection = reads.feature_projection(fresh, f.id)["top"]
    assert [p.token_str for p in projection] == [
        p.token_str for p in reads.feature_projection(session, original.id)["top"]]  # fmt: skip


@pytest.mark.parametrize("damage", ["bad_json", "bad_index", "bad_value", "empty_label",
                                    "wrong_layer"])  # fmt: skip
def test_a_bad_file_writes_nothing(session, indexed, fresh, tmp_path, damage):
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    sub = {"bad_json": "features", "bad_index": "activations", "bad_value": "features",
           "empty_label": "explanations", "wrong_layer": "activations"}[damage]  # fmt: skip
    path = sorted((folder / sub).glob("batch-*.jsonl.gz"))[-1]
    rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    row = rows[-1]
    if damage == "bad_index":
        row["index"] = "400"
    elif damage == "bad_value":
        row["frac_nonzero"] = "lots"
    elif damage == "empty_label":
        row["description"] = "  "
    elif damage == "wrong_layer":
        row["layer"] = "7-other"
    text = "\n".join(json.dumps(r) for r in rows) + ("\n{not json" if damage == "bad_json" else "")
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(SpecError):
        neuronpedia_import.import_neuronpedia(fresh, folder, "copy")
    assert fresh.get(SAE, "copy") is None
    assert fresh.scalar(select(Feature.id).limit(1)) is None


def test_import_refuses_an_existing_id_and_a_folder_that_is_not_an_export(
    session, indexed, tmp_path
):
    neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    with pytest.raises(SpecError) as err:
        neuronpedia_import.import_neuronpedia(session, tmp_path / "out", "sae-a")
    assert err.value.field == "id"
    (tmp_path / "empty").mkdir()
    assert not neuronpedia_import.is_neuronpedia_folder(tmp_path / "empty")
    with pytest.raises(SpecError) as err:
        neuronpedia_import.import_neuronpedia(session, tmp_path / "empty", "x")
    assert err.value.field == "path"


def test_cli_export_and_import_dispatch_on_the_layout(tmp_path, monkeypatch, make_sae):
    from typer.testing import CliRunner

    from saefeat.cli import app
    from saefeat.config import get_settings
    from saefeat.sae import SAEConfig
    from saefeat.sae.topk import TopKSAE
    from saefeat.storage.catalog.db import catalog_session

    monkeypatch.setenv("SAEFEAT_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        with catalog_session(get_settings()) as s:
            make_sae(s, d_sae=12)
            write_feature_index(s, "sae-a", synthetic_feature_index(12, seed=1))
        out = tmp_path / "np"
        run = CliRunner().invoke(app, ["export", "--sae", "sae-a", "--to", "neuronpedia",
                                       "--out", str(out)])  # fmt: skip
        assert run.exit_code == 0, run.output
        run = CliRunner().invoke(app, ["import", str(out), "--id", "back"])
        assert run.exit_code == 0, run.output
        assert "12 features" in run.output
        with catalog_session(get_settings()) as s:
            assert queries.count_features(s, "back") == 12
        bad = CliRunner().invoke(app, ["export", "--sae", "sae-a", "--to", "np", "--out", "x"])
        assert bad.exit_code == 2 and "neuronpedia" in bad.output
        (tmp_path / "a-file").write_text("")  # was a NotADirectoryError traceback
        cfg = SAEConfig(d_in=8, d_sae=12, k=3, model="m", hook="blocks.0.hook_resid_post")
        TopKSAE(cfg).save(get_settings().saes_dir / "sae-a")  # weights for the weight formats
        for to in ("neuronpedia", "saelens", "sparsify"):
            for out in (tmp_path / "a-file", tmp_path / "a-file" / "below"):
                bad = CliRunner().invoke(app, ["export", "--sae", "sae-a", "--to", to,
                                               "--out", str(out)])  # fmt: skip
                assert bad.exit_code == 2 and "out:" in bad.output, bad.output
        with catalog_session(get_settings()) as s, pytest.raises(SpecError) as err:
            neuronpedia.export_neuronpedia(s, "sae-a", tmp_path / "a-file" / "below")
        assert err.value.field == "out"  # a file on the way: the exporter's own check
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        ({"saelensConfig": "{not json"}, "saelensConfig"),
        ({"saelensConfig": [1, 2]}, "saelensConfig"),
        ({"saelensConfig": {"d_sae": "forty"}}, "d_sae"),
        ({"saelensConfig": {"d_sae": 40, "d_in": 1.5}}, "d_in"),
        ({"neighbours": ["x"]}, "topkCosSimIndices"),
        ({"neighbours": [40]}, "topkCosSimIndices"),  # past d_sae
    ],
)
def test_a_malformed_config_or_neighbour_is_a_spec_error(session, indexed, fresh, tmp_path,
                                                         damage, field):  # fmt: skip
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    source = json.loads((folder / "source.jsonl").read_text())
    if "saelensConfig" in damage:  # these were tracebacks (ValueError, AttributeError)
        source["saelensConfig"] = damage["saelensConfig"]
        (folder / "source.jsonl").write_text(json.dumps(source) + "\n")
    else:
        path = sorted((folder / "features").glob("batch-*.jsonl.gz"))[0]
        rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
        rows[0]["topkCosSimIndices"] = damage["neighbours"]
        rows[0]["topkCosSimValues"] = [0.5]
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    with pytest.raises(SpecError) as err:
        neuronpedia_import.import_neuronpedia(fresh, folder, "copy")
    assert err.value.field == field
    assert fresh.get(SAE, "copy") is None


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        ({"example": {"rank": None}}, "saefeat"),  # were KeyError/TypeError tracebacks
        ({"example": {"token_ids": [1]}}, "saefeat"),  # not one id per token
        ({"example": {"kind": "best"}}, "saefeat"),
        ({"label": {"score": "high"}}, "score"),
        ({"label": {"created_at": "yesterday"}}, "created_at"),
        ({"effects": {"guessed": {"up": [], "down": []}}}, "effects"),
        ({"effects": {"measured": {"up": [[1, "a", float("nan")]], "down": []}}}, "effects"),
        ({"effects": {"debiased": {"up": [["1", "a", 0.5]], "down": []}}}, "effects"),
    ],
)
def test_a_malformed_side_record_is_a_spec_error(session, indexed, fresh, tmp_path, damage,
                                                 field):  # fmt: skip
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    path = sorted((folder / "saefeat").glob("batch-*.jsonl.gz"))[0]
    rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    row = next(r for r in rows if r["labels"])  # feature 3: examples and labels
    if "example" in damage:
        row["examples"][0].update(damage["example"])
    elif "effects" in damage:
        row["effects"] = damage["effects"]
    else:
        row["labels"][0].update(damage["label"])
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    with pytest.raises(SpecError) as err:
        neuronpedia_import.import_neuronpedia(fresh, folder, "copy")
    assert err.value.field == field
    assert fresh.get(SAE, "copy") is None


@pytest.fixture
def mapped(session, make_sae):
    """40 features on a map (feature 7 not placed), two of them labelled."""
    import numpy as np

    make_sae(session, d_sae=40, sae_id="sae-m")
    index = synthetic_feature_index(40, n_examples=2, n_quantile=0, seed=7)
    index.umap = np.random.default_rng(1).normal(size=(40, 2)) * 3
    index.umap[7] = np.nan  # e.g. imported from a map of explained features only
    write_feature_index(session, "sae-m", index)
    for i in (3, 30):
        add_label(session, queries.get_feature(session, "sae-m", i), text=f"f{i}", author="ada")
    session.commit()
    return index.umap


def _map(s: Session, sae_id: str) -> dict[int, tuple]:
    rows = s.execute(select(Feature.index, Feature.umap_x, Feature.umap_y)
                     .where(Feature.sae_id == sae_id)).all()  # fmt: skip
    return {i: (x, y) for i, x, y in rows}


def test_the_map_goes_out_in_neuronpedias_umap_fields_and_comes_back(session, mapped, fresh,
                                                                     tmp_path):  # fmt: skip
    stored = _map(session, "sae-m")
    assert stored[7] == (None, None) and stored[3] == tuple(mapped[3])
    folder = neuronpedia.export_neuronpedia(session, "sae-m", tmp_path / "out")
    assert json.loads((folder / "source.jsonl").read_text())["hasUmap"] is True
    expl = {int(r["index"]): r for r in _rows(folder, "explanations")}
    assert set(expl) == {3, 30}  # Neuronpedia keeps the map on Explanation rows
    for i in (3, 30):
        assert (expl[i]["umap_x"], expl[i]["umap_y"]) == tuple(mapped[i])
    side = {r["index"]: r for r in _rows(folder, "saefeat")}
    assert (side[12]["umap_x"], side[12]["umap_y"]) == tuple(mapped[12])  # unlabelled too
    assert side[7]["umap_x"] is None
    neuronpedia_import.import_neuronpedia(fresh, tmp_path / "out", "copy")
    assert _map(fresh, "copy") == stored


def test_a_neuronpedia_folder_gives_the_map_of_its_explanations(session, mapped, fresh,
                                                                tmp_path):  # fmt: skip
    folder = neuronpedia.export_neuronpedia(session, "sae-m", tmp_path / "out")
    shutil.rmtree(folder / "saefeat")  # as Neuronpedia exports: the map only on labels
    neuronpedia_import.import_neuronpedia(fresh, folder, "np")
    got = _map(fresh, "np")
    assert got[3] == tuple(mapped[3]) and got[30] == tuple(mapped[30])
    assert got[12] == (None, None)


def test_a_sae_without_a_map_exports_none(session, indexed, tmp_path):
    folder = neuronpedia.export_neuronpedia(session, "sae-a", tmp_path / "out")
    assert json.loads((folder / "source.jsonl").read_text())["hasUmap"] is False
    assert all(r["umap_x"] is None for r in _rows(folder, "explanations"))


def test_a_bad_umap_value_is_a_spec_error(session, mapped, fresh, tmp_path):
    folder = neuronpedia.export_neuronpedia(session, "sae-m", tmp_path / "out")
    path = sorted((folder / "explanations").glob("batch-*.jsonl.gz"))[0]
    rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    rows[0]["umap_x"] = "left"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    shutil.rmtree(folder / "saefeat")
    with pytest.raises(SpecError) as err:
        neuronpedia_import.import_neuronpedia(fresh, folder, "np")
    assert err.value.field == "umap_x"
    assert fresh.get(SAE, "np") is None


@pytest.mark.parametrize(
    ("model_name", "model_id", "display", "instruct"),
    [
        # the embedded alias is a 4-bit SmolLM2-135M-Instruct: named by its hub id
        ("smollm2-135m", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("EleutherAI/pythia-70m", "pythia-70m", "EleutherAI/pythia-70m", False),
        ("google/gemma-2-2b-it", "gemma-2-2b-it", "google/gemma-2-2b-it", True),
    ],
)
def test_the_model_record_names_the_hub_model_and_whether_it_is_instruct(
    session, fresh, tmp_path, model_name, model_id, display, instruct
):
    from synthetic_catalog import register_test_sae

    register_test_sae(session, "sae-m", 8, model_name=model_name)
    write_feature_index(session, "sae-m", synthetic_feature_index(8, seed=3))
    folder = neuronpedia.export_neuronpedia(session, "sae-m", tmp_path / "out")
    assert folder.parent.name == model_id
    model = json.loads((folder / "model.jsonl").read_text())
    assert (model["id"], model["displayName"], model["instruct"]) == (model_id, display, instruct)
    source = json.loads((folder / "source.jsonl").read_text())
    assert source["modelId"] == model_id and source["saelensConfig"]["model_name"] == display
    neuronpedia_import.import_neuronpedia(fresh, tmp_path / "out", "copy")
    assert fresh.get(SAE, "copy").model_name == model_name  # the name saefeat loads it by


def test_instruct_is_read_from_the_name_parts():
    from saefeat.shapes import hub_model_id, is_instruct_model

    assert hub_model_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id("/models/tiny") == "/models/tiny"
    for name in ("smollm2-135m", "Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-2-7b-chat-hf",
                 "allenai/OLMo-2-0425-1B-SFT", "google/gemma-2-2b-it"):  # fmt: skip
        assert is_instruct_model(name), name
    for name in ("HuggingFaceTB/SmolLM2-135M", "gpt2", "google/gemma-2-2b", "/srv/it-models/x",
                 "EleutherAI/pythia-70m-deduped"):  # fmt: skip
        assert not is_instruct_model(name), name


def test_export_reports_progress_by_batch(session, indexed, tmp_path):
    seen = []
    neuronpedia.export_neuronpedia(
        session, "sae-a", tmp_path / "out", progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(16, 40), (32, 40), (40, 40)]  # BATCH is 16 in the fixture
