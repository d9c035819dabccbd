"""A crosscoder's features in the catalog (on SQLite and PostgreSQL): listed by class and
by relative norm (keyset pages, ties by index), refused for other SAEs naming the
parameter, read back with their norms, and exported to the Neuronpedia layout with the
sources and each feature's norms, relative norm and class in the side records."""

from __future__ import annotations

import gzip
import json

import pytest
from sqlalchemy.orm import Session
from synthetic_catalog import register_test_sae, synthetic_feature_index
from synthetic_crosscoder import SOURCES, WIDTH, register_crosscoder

from saefeat.errors import SpecError
from saefeat.storage.catalog import neuronpedia, queries
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 40


def _all(session: Session, sae_id: str, **kw) -> list:
    out, cursor = [], None
    while True:
        page = queries.list_features(session, sae_id, limit=7, cursor=cursor,
                                     artifacts="include", **kw)  # fmt: skip
        out += page.items
        if not (cursor := page.next_cursor):
            return out


def test_features_filter_by_class_and_sort_by_relative_norm(session: Session):
    index = register_crosscoder(session, "sae-x", D_SAE)
    for cls in ("a_only", "shared", "b_only"):
        got = {f.index for f in _all(session, "sae-x", sharing=cls)}
        want = {i for i, c in enumerate(index.sharing) if c == cls}
        assert got == want and want
    for order in ("asc", "desc"):
        rows = _all(session, "sae-x", sort="relative_norm", order=order)
        sign = 1 if order == "asc" else -1
        want = sorted(range(D_SAE), key=lambda i: (sign * index.relative_norms[i], i))
        assert [f.index for f in rows] == want
        assert [f.relative_norm for f in rows] == pytest.approx(
            [index.relative_norms[i] for i in want])  # fmt: skip
    shared = _all(session, "sae-x", sort="relative_norm", sharing="shared")
    assert all(0.1 <= f.relative_norm <= 0.9 and f.sharing == "shared" for f in shared)
    assert shared[0].decoder_norms == pytest.approx(index.decoder_norms[shared[0].index].tolist())


def test_relative_norm_and_class_are_a_two_source_crosscoders(session: Session):
    register_test_sae(session, "sae-a", 8)
    session.commit()
    write_feature_index(session, "sae-a", synthetic_feature_index(8, seed=1))
    three = SOURCES + [SOURCES[0] | {"hook": "blocks.7.hook_resid_post"}]
    register_test_sae(session, "sae-3", 8, cfg={"sources": three}, d_in=3 * WIDTH)
    session.commit()
    for sae_id, kw, field in (("sae-a", {"sort": "relative_norm"}, "sort"),
                              ("sae-a", {"sharing": "a_only"}, "sharing"),
                              ("sae-3", {"sharing": "b_only"}, "sharing")):  # fmt: skip
        with pytest.raises(SpecError) as e:
            queries.list_features(session, sae_id, **kw)
        assert e.value.field == field and "two sources" in e.value.message
    register_crosscoder(session, "sae-x", D_SAE)
    with pytest.raises(SpecError) as e:
        queries.list_features(session, "sae-x", sharing="both")  # type: ignore[arg-type]
    assert e.value.field == "sharing"
    plain = queries.list_features(session, "sae-a").items[0]
    assert (plain.decoder_norms, plain.relative_norm, plain.sharing) == (None, None, None)
    assert queries.sae_sources(session, "sae-a") == [] and queries.sae_sources(session, "x") == []
    assert queries.sae_sources(session, "sae-x") == SOURCES


def test_a_feature_and_the_sae_pages_list_read_the_norms(session: Session):
    index = register_crosscoder(session, "sae-x", D_SAE)
    feature = queries.get_feature(session, "sae-x", 3)
    assert feature.decoder_norms == pytest.approx(index.decoder_norms[3].tolist())
    assert feature.relative_norm == pytest.approx(index.relative_norms[3])
    assert feature.sharing == index.sharing[3]
    rows = queries.strongest_features(session, "sae-x", offset=0, limit=D_SAE,
                                      sort="relative_norm", order="asc", sharing="b_only",
                                      artifacts="include")  # fmt: skip
    want = sorted((i for i, c in enumerate(index.sharing) if c == "b_only"),
                  key=lambda i: (index.relative_norms[i], i))  # fmt: skip
    assert [f.index for f, _ in rows] == want


def test_neuronpedia_export_carries_sources_and_norms(sqlite_session: Session, tmp_path):
    index = register_crosscoder(sqlite_session, "sae-x", D_SAE)
    folder = neuronpedia.export_neuronpedia(sqlite_session, "sae-x", tmp_path / "out")
    assert folder.name == f"6-saefeat-crosscoder-{D_SAE}"
    cfg = json.loads((folder / "source.jsonl").read_text())["saelensConfig"]
    assert cfg["saefeat"]["sources"] == SOURCES and cfg["saefeat"]["kind"] == "crosscoder"
    assert cfg["d_in"] == 2 * WIDTH
    assert json.loads((folder / "model.jsonl").read_text())["dimension"] == WIDTH
    description = json.loads((folder / "sourceset.jsonl").read_text())["description"]
    assert description.startswith("crosscoder of model-a blocks.6.hook_resid_post, model-b")
    side = [json.loads(line) for p in sorted((folder / "saefeat").iterdir())
            for line in gzip.decompress(p.read_bytes()).decode().splitlines()]  # fmt: skip
    assert [r["index"] for r in side] == list(range(D_SAE))
    for r in side:
        i = r["index"]
        assert r["decoder_norms"] == pytest.approx(index.decoder_norms[i].tolist())
        assert r["relative_norm"] == pytest.approx(index.relative_norms[i])
        assert r["sharing"] == index.sharing[i]


def test_an_saes_side_records_stay_as_they_were(sqlite_session: Session, tmp_path):
    register_test_sae(sqlite_session, "sae-a", 8)
    sqlite_session.commit()
    write_feature_index(sqlite_session, "sae-a", synthetic_feature_index(8, seed=1))
    folder = neuronpedia.export_neuronpedia(sqlite_session, "sae-a", tmp_path / "out")
    side = gzip.decompress((folder / "saefeat" / "batch-0.jsonl.gz").read_bytes()).decode()
    assert "decoder_norms" not in side and folder.name == "6-saefeat-res-8"
    assert "sources" not in json.loads((folder / "source.jsonl").read_text())["saelensConfig"][
        "saefeat"]  # fmt: skip
