"""write_feature_index stores everything, and replaces a previous index all at once."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from synthetic_catalog import register_test_sae, synthetic_feature_index

from saefeat.errors import NotFoundError, SpecError
from saefeat.features.records import FeatureExample as ExampleRecord
from saefeat.features.records import VocabProjection
from saefeat.storage.catalog.feature_reads import feature_examples, feature_projection
from saefeat.storage.catalog.labels import add_label, label_history
from saefeat.storage.catalog.models import Feature, FeatureExampleRow, VocabToken
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.registry import register_sae
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 40


def _count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def _snapshot(session, sae_id: str) -> dict:
    """Everything a reader could see of one SAE's index."""
    features = session.scalars(select(Feature).where(Feature.sae_id == sae_id)).all()
    return {
        f.index: (
            f.density,
            f.max_activation,
            f.mean_activation,
            [(e.kind, e.rank, e.activation, e.values) for e in feature_examples(session, f.id)],
            {
                s: [(t.token_str, t.value) for t in v]
                for s, v in feature_projection(session, f.id).items()
            },
        )
        for f in features
    }


def test_write_stores_the_whole_index(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    index = synthetic_feature_index(D_SAE, n_examples=4, n_quantile=2, seed=3)
    summary = write_feature_index(session, sae.id, index)

    assert summary.n_features == D_SAE == _count(session, Feature)
    assert summary.n_examples == len(index.examples) == _count(session, FeatureExampleRow)
    assert summary.n_vocab_tokens == _count(session, VocabToken) == D_SAE * 16
    for i in (0, 7, D_SAE - 1):
        feature = get_feature(session, sae.id, i)
        assert feature.density == pytest.approx(index.density[i])
        assert feature.max_activation == pytest.approx(index.max_activation[i])
        assert feature.histogram["counts"] == index.histograms[i].tolist()
        assert feature.histogram["edges"] == pytest.approx(index.histogram_edges.tolist())
        stored = feature_examples(session, feature.id)
        given = sorted(
            (e for e in index.examples if e.feature_index == i),
            key=lambda e: (e.kind != "top", e.kind, e.rank),
        )
        assert [(e.kind, e.rank, e.token_strs, e.values) for e in stored] == [
            (e.kind, e.rank, e.token_strs, e.values) for e in given
        ]
        projection = feature_projection(session, feature.id)
        assert [t.token_str for t in projection["top"]] == index.projections[i].top_strs
        assert [t.value for t in projection["bottom"]] == index.projections[i].bottom_values


def test_rewrite_replaces_the_index_and_keeps_labels(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    write_feature_index(session, sae.id, synthetic_feature_index(D_SAE, n_examples=6, seed=1))
    before_ids = dict(session.execute(select(Feature.index, Feature.id)).all())
    held = get_feature(session, sae.id, 5)
    add_label(session, held, text="python keywords")
    session.commit()

    second = synthetic_feature_index(D_SAE, n_examples=2, n_vocab=3, seed=2)
    write_feature_index(session, sae.id, second)

    assert _count(session, Feature) == D_SAE
    assert _count(session, FeatureExampleRow) == len(second.examples)
    assert _count(session, VocabToken) == D_SAE * 6
    assert dict(session.execute(select(Feature.index, Feature.id)).all()) == before_ids
    feature = get_feature(session, sae.id, 5)
    assert feature.id == held.id and feature.density == pytest.approx(second.density[5])
    assert [lb.text for lb in label_history(session, feature.id)] == ["python keywords"]


def test_a_failed_write_leaves_the_old_index_intact(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    write_feature_index(session, sae.id, synthetic_feature_index(D_SAE, seed=1))
    before = _snapshot(session, sae.id)

    broken = synthetic_feature_index(D_SAE, seed=9)
    # Two projections for one feature collide on the primary key (feature, side, rank):
    # the database refuses the last bulk insert, after features and examples were written.
    broken.projections.append(broken.projections[0])
    with pytest.raises(IntegrityError):
        write_feature_index(session, sae.id, broken)

    assert _snapshot(session, sae.id) == before


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (lambda ix: setattr(ix, "density", ix.density[:-1]), "density"),
        (lambda ix: setattr(ix, "max_activation", ix.max_activation + np.inf), "max_activation"),
        (lambda ix: setattr(ix.examples[0], "feature_index", D_SAE), "examples[0].feature_index"),
        (lambda ix: setattr(ix.examples[1], "kind", "bottom"), "examples[1]"),
        (lambda ix: setattr(ix.examples[2], "values", [float("nan")] * 9), "examples[2].values"),
        (lambda ix: setattr(ix.examples[3], "focus", 99), "examples[3].focus"),
        (lambda ix: setattr(ix.projections[4], "top_strs", ["x"]), "projections[4]"),
        (lambda ix: setattr(ix, "histograms", ix.histograms[:, :3]), "edges"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(sqlite_session, make_sae, spoil, field):
    session = sqlite_session
    sae = make_sae(session, d_sae=D_SAE)
    write_feature_index(session, sae.id, synthetic_feature_index(D_SAE, seed=1))
    before = _snapshot(session, sae.id)
    bad = synthetic_feature_index(D_SAE, seed=4, dead_fraction=0.0)
    spoil(bad)
    with pytest.raises(SpecError) as caught:
        write_feature_index(session, sae.id, bad)
    assert caught.value.field == field
    assert _snapshot(session, sae.id) == before


def test_never_fired_features_store_zero_mean(sqlite_session, make_sae):
    session = sqlite_session
    sae = make_sae(session, d_sae=D_SAE)
    index = synthetic_feature_index(D_SAE, seed=5, dead_fraction=0.5)
    dead = int(np.flatnonzero(index.density == 0)[0])
    assert np.isnan(index.mean_activation[dead])
    write_feature_index(session, sae.id, index)
    assert get_feature(session, sae.id, dead).mean_activation == 0.0


def test_writing_to_an_unknown_sae_is_not_found(sqlite_session):
    with pytest.raises(NotFoundError):
        write_feature_index(sqlite_session, "nope", synthetic_feature_index(4))


def test_nul_and_long_token_strings_are_stored(session, make_sae):
    """PostgreSQL text cannot hold NUL; byte tokens can decode to one."""
    sae = make_sae(session, d_sae=2)
    index = synthetic_feature_index(2, seed=6, dead_fraction=0.0)
    index.projections[0] = VocabProjection(0, [0, 1], ["\x00", "x" * 500], [2.0, 1.0], [], [], [])
    index.examples.append(
        ExampleRecord(1, 99, 1.0, 0, 0, [0], ["\x00"], [1.0], focus=0, kind="quantile")
    )
    write_feature_index(session, sae.id, index)
    top = feature_projection(session, get_feature(session, sae.id, 0).id)["top"]
    assert [t.token_str for t in top] == ["\u2400", "x" * 200]


def test_register_sae_updates_in_place_but_refuses_a_new_width(sqlite_session, make_sae):
    session = sqlite_session
    sae = make_sae(session, d_sae=8)
    again = register_test_sae(
        session, sae.id, 8, name="renamed", model_name="m", k=4, metrics={"fvu": 0.1}
    )
    assert again is sae and sae.name == "renamed" and sae.metrics == {"fvu": 0.1}
    with pytest.raises(SpecError, match="d_sae=8"):
        register_sae(
            session,
            sae_id=sae.id,
            name="x",
            model_name="m",
            hook_name="h",
            architecture="topk",
            d_in=576,
            d_sae=16,
        )
    with pytest.raises(SpecError) as caught:
        register_sae(
            session, name="x", model_name="m", hook_name="h", architecture="topk", d_in=4,
            d_sae=8, k=9,
        )  # fmt: skip
    assert caught.value.field == "k"
