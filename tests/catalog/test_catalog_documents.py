"""The database-built feature document and the one-query label state, on both databases:
they are per-dialect SQL, so each must agree with the plain row reads."""

from __future__ import annotations

from dataclasses import asdict, fields

import orjson
import pytest
from synthetic_catalog import synthetic_feature_index

from saefeat.features.records import FeatureExample
from saefeat.storage.catalog.documents import feature_document
from saefeat.storage.catalog.feature_reads import (
    feature_examples,
    feature_neighbours,
    feature_projection,
)
from saefeat.storage.catalog.labels import (
    add_label,
    label_history,
    label_state_around,
    vote_label,
)
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 12


@pytest.fixture
def indexed(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    index = synthetic_feature_index(D_SAE, n_examples=4, n_quantile=6, n_neighbours=3, seed=9)
    write_feature_index(session, sae.id, index)
    return sae, index


def test_document_agrees_with_the_rows(session, indexed):
    sae, _ = indexed
    for i in range(D_SAE):
        feature = get_feature(session, sae.id, i)
        document = feature_document(session, feature.id)
        examples = orjson.loads(document.examples)
        rows = feature_examples(session, feature.id)
        # One shape: each JSON object is the record the row read gives, field for field
        # (floats to SQLite JSON's 15 digits).
        assert len(examples) == len(rows)
        for e, r in zip(examples, rows, strict=True):
            assert list(e) == [f.name for f in fields(FeatureExample)]
            assert e["feature_index"] == i
            e_exact, r_exact = dict(e), asdict(r)
            for name in ("activation", "values"):
                assert e_exact.pop(name) == pytest.approx(r_exact.pop(name))
            assert e_exact == r_exact
        sides = feature_projection(session, feature.id)
        for side, text in (
            ("top", document.projection_top),
            ("bottom", document.projection_bottom),
        ):
            got = orjson.loads(text)
            assert [(t["rank"], t["token"], t["token_id"]) for t in got] == [
                (t.rank, t.token_str, t.token_id) for t in sides[side]
            ]
            assert [t["value"] for t in got] == pytest.approx([t.value for t in sides[side]])
        near = orjson.loads(document.neighbours)
        expected = feature_neighbours(session, feature.id)
        assert [(n["index"], n["rank"], n["feature_id"]) for n in near] == [
            (m.feature.index, m.rank, m.feature.id) for m in expected
        ]


def test_document_of_a_feature_with_nothing_stored_is_empty_arrays(session, make_sae):
    sae = make_sae(session, d_sae=4)
    index = synthetic_feature_index(4, n_examples=0, n_neighbours=0, seed=1)
    write_feature_index(session, sae.id, index)
    document = feature_document(session, get_feature(session, sae.id, 0).id)
    assert orjson.loads(document.examples) == [] and orjson.loads(document.neighbours) == []


def test_label_state_around_holds_the_feature_and_its_neighbours(session, indexed):
    sae, index = indexed
    feature = get_feature(session, sae.id, 5)
    near = [int(i) for i in index.neighbour_indices[5]]
    far = next(i for i in range(D_SAE) if i != 5 and i not in near)
    own = add_label(session, feature, text="own label", author="a")
    add_label(session, feature, text="older auto", source="auto", score=0.9)
    neighbour = get_feature(session, sae.id, near[0])
    add_label(session, neighbour, text="neighbour label", author="b")
    add_label(session, get_feature(session, sae.id, far), text="unrelated", author="c")
    vote_label(session, own.id, voter="x", value=-1)
    vote_label(session, own.id, voter="y", value=-1)
    session.commit()

    state = label_state_around(session, feature.id)
    assert set(state.by_feature) == {feature.id, neighbour.id}
    assert [lb.id for lb in state.history(feature.id)] == [
        lb.id for lb in label_history(session, feature.id)
    ]
    assert (state.votes[own.id].up, state.votes[own.id].down) == (0, 2)
    # Voted down, so the auto label is current; the neighbour's own label is its current.
    assert state.current(feature.id).text == "older auto"
    assert state.current(neighbour.id).text == "neighbour label"
