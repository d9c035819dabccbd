"""Token effects (measured, debiased) go into `token_effects` and come back by feature."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select
from synthetic_catalog import synthetic_effects, synthetic_feature_index

from saefeat.errors import SpecError
from saefeat.storage.catalog.feature_reads import feature_effects, feature_effects_many
from saefeat.storage.catalog.models import TokenEffect
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 24


def _count(session) -> int:
    return session.scalar(select(func.count()).select_from(TokenEffect))


def _as_stored(effects) -> dict:
    return {
        m: {s: [(e.rank, e.token_id, e.token_str, e.value) for e in v] for s, v in sides.items()}
        for m, sides in effects.items()
    }


def _given(eff) -> dict:
    return {
        side: [(r, i, t, v) for r, (i, t, v) in enumerate(zip(ids, strs, vals, strict=True))]
        for side, ids, strs, vals in (
            ("up", eff.up_ids, eff.up_strs, eff.up_values),
            ("down", eff.down_ids, eff.down_strs, eff.down_values),
        )
    }


def test_effects_round_trip_and_batched_read_agrees(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    index = synthetic_effects(synthetic_feature_index(D_SAE, seed=4), n=5, seed=4)
    summary = write_feature_index(session, sae.id, index)
    assert summary.n_token_effects == _count(session) == len(index.effects) * 10
    dead = [f for f in range(D_SAE) if index.density[f] == 0]
    assert dead, "the synthetic index has dead features: they have no measured effect"
    ids = {i: get_feature(session, sae.id, i).id for i in range(D_SAE)}
    many = feature_effects_many(session, ids.values())
    for i, fid in ids.items():
        stored = _as_stored(feature_effects(session, fid))
        assert stored == _as_stored(many[fid])
        given = {e.method: _given(e) for e in index.effects if e.feature_index == i}
        assert stored["debiased"] == given["debiased"]
        if i in dead:
            assert stored["measured"] == {"up": [], "down": []}
        else:
            assert stored["measured"] == given["measured"]


def test_reindex_replaces_the_old_effects(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    write_feature_index(session, sae.id, synthetic_effects(synthetic_feature_index(D_SAE), n=6))
    second = synthetic_feature_index(D_SAE, seed=9)
    write_feature_index(session, sae.id, second)  # an index without effects
    assert _count(session) == 0
    third = synthetic_effects(synthetic_feature_index(D_SAE, seed=9), n=2, seed=1)
    write_feature_index(session, sae.id, third)
    assert _count(session) == len(third.effects) * 4
    fid = get_feature(session, sae.id, 3).id
    assert len(feature_effects(session, fid)["debiased"]["up"]) == 2


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda e: setattr(e, "method", "guessed"), "effects[0].method"),
        (lambda e: setattr(e, "feature_index", D_SAE), "effects[0].feature_index"),
        (lambda e: e.up_values.__setitem__(0, math.nan), "effects[0].up_values"),
        (lambda e: e.down_strs.pop(), "effects[0]"),
    ],
)
def test_bad_effects_are_refused_and_the_old_index_stays(session, make_sae, change, field):
    sae = make_sae(session, d_sae=D_SAE)
    write_feature_index(session, sae.id, synthetic_effects(synthetic_feature_index(D_SAE)))
    before = _count(session)
    bad = synthetic_effects(synthetic_feature_index(D_SAE, seed=5), seed=5)
    change(bad.effects[0])
    with pytest.raises(SpecError) as err:
        write_feature_index(session, sae.id, bad)
    assert err.value.field == field
    assert _count(session) == before


def test_two_rankings_of_one_method_for_a_feature_are_refused(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    index = synthetic_effects(synthetic_feature_index(D_SAE))
    index.effects.append(index.effects[0])
    with pytest.raises(SpecError, match="two"):
        write_feature_index(session, sae.id, index)
