"""Listing, paging and searching features; the current-label rule."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from paging import all_pages
from synthetic_catalog import synthetic_feature_index

from saefeat.errors import NotFoundError, SpecError
from saefeat.features.records import VocabProjection
from saefeat.storage.catalog.cursor import InvalidCursorError
from saefeat.storage.catalog.labels import pick_current_label
from saefeat.storage.catalog.models import Label
from saefeat.storage.catalog.queries import (
    SetLineage,
    get_feature,
    list_features,
    list_saes,
    sae_lineage,
    strongest_features,
)
from saefeat.storage.catalog.token_search import search_tokens, token_variants
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 57  # odd, so the last page is partial


@pytest.fixture
def indexed(session, make_sae):
    sae = make_sae(session, d_sae=D_SAE)
    index = synthetic_feature_index(D_SAE, seed=11, dead_fraction=0.2)
    # Coarse values make ties, which the cursor's tie-break on index must get right.
    index.max_activation = np.round(index.max_activation / 3)
    for sort in ("max_activation", "density"):
        live = getattr(index, sort)[index.density > 0]
        assert len(set(live.tolist())) < len(live), f"want ties in {sort}"
    write_feature_index(session, sae.id, index)
    return session, sae, index


DENSITY_WINDOWS = [(None, None), (0.001, None), (None, 0.05), (0.0, 0.0)]


def test_walking_every_page_yields_each_feature_once_in_order(indexed):
    session, sae, index = indexed
    for sort, order, (lo, hi) in itertools.product(
        ("max_activation", "density"), ("desc", "asc"), DENSITY_WINDOWS
    ):
        case = f"sort={sort} order={order} density in [{lo}, {hi}]"
        values = getattr(index, sort)
        keep = [
            i
            for i in range(D_SAE)
            if (lo is None or index.density[i] >= lo) and (hi is None or index.density[i] <= hi)
        ]
        sign = -1 if order == "desc" else 1
        expected = sorted(keep, key=lambda i, v=values, s=sign: (s * v[i], i))

        def fetch(s=sort, o=order, lo=lo, hi=hi, **page):
            return list_features(
                session, sae.id, sort=s, order=o, min_density=lo, max_density=hi, **page
            )

        assert [f.index for f in all_pages(fetch, limit=7)] == expected, case
        assert [f.index for f in fetch(limit=500).items] == expected, case


def test_a_cursor_only_fits_the_ordering_it_came_from(indexed):
    session, sae, _ = indexed
    cursor = list_features(session, sae.id, sort="density", limit=5).next_cursor
    with pytest.raises(InvalidCursorError, match="ordering 'density:desc'"):
        list_features(session, sae.id, sort="max_activation", cursor=cursor)
    for bad in ("x", "!!!", "eyJvIjoxfQ", cursor[:-3], "bnVsbA"):
        with pytest.raises(InvalidCursorError) as caught:
            list_features(session, sae.id, sort="density", cursor=bad)
        assert caught.value.field == "cursor"


def test_bad_list_arguments_name_their_field(indexed):
    session, sae, _ = indexed
    with pytest.raises(NotFoundError):
        list_features(session, "nope")
    for kwargs, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"sort": "index"}, "sort"),
        ({"order": "up"}, "order"),
        ({"min_density": 0.5, "max_density": 0.1}, "min_density"),
    ]:
        with pytest.raises(SpecError) as caught:
            list_features(session, sae.id, **kwargs)
        assert caught.value.field == field


def test_list_saes_pages_by_id(session, make_sae):
    for name in ("c", "a", "b"):
        make_sae(session, d_sae=4, sae_id=name)
    saes = all_pages(lambda **p: list_saes(session, **p), limit=2)
    assert [s.id for s in saes] == ["a", "b", "c"]


def test_get_feature_explains_a_missing_feature(session, make_sae):
    sae = make_sae(session, d_sae=4)
    with pytest.raises(NotFoundError, match="not been indexed"):
        get_feature(session, sae.id, 0)
    with pytest.raises(NotFoundError, match=r"0\.\.3"):
        get_feature(session, sae.id, 4)


def test_token_variants():
    assert set(token_variants("cat")) == {"cat", " cat", "Ġcat", "▁cat"}
    assert set(token_variants("Ġcat")) == {"cat", " cat", "Ġcat", "▁cat"}
    assert set(token_variants(" ")) == {" ", "  ", "Ġ ", "▁ "}  # a bare space is a token
    assert token_variants("Ġcat", exact=True) == ["Ġcat"]


@pytest.fixture
def searchable(session, make_sae):
    """Two SAEs whose projections hold known spellings of "cat"."""
    found = {}
    for sae_id, seed in (("s1", 1), ("s2", 2)):
        sae = make_sae(session, d_sae=30, sae_id=sae_id)
        index = synthetic_feature_index(30, seed=seed, n_vocab=2)
        rng = np.random.default_rng(seed)
        for f in range(30):
            spelling = ["cat", " cat", "Ġcat", "▁cat", "dog", "Ġcats"][f % 6]
            value = float(np.round(rng.uniform(0.5, 3.0), 1))  # coarse: ties happen
            both = f % 10 == 0  # two spellings in one list: the feature must appear once
            top = [spelling, "Ġcat" if both else "zebra"]
            index.projections[f] = VocabProjection(
                f, [1, 2], top, [value, value / 2], [3], [spelling], [-value]
            )
            if spelling in ("cat", " cat", "Ġcat", "▁cat"):
                found[(sae_id, f)] = value
            elif both:
                found[(sae_id, f)] = value / 2
        write_feature_index(session, sae.id, index)
    return session, found


def test_search_finds_every_spelling_strongest_first(searchable):
    session, found = searchable
    for query in ("cat", "Ġcat", " cat"):
        matches = all_pages(lambda q=query, **p: search_tokens(session, q, **p), limit=4)
        got = [(m.feature.sae_id, m.feature.index) for m in matches]
        assert sorted(got) == sorted(found), query
        assert len(got) == len(set(got))
        values = [m.value for m in matches]
        assert values == sorted(values, reverse=True)
        assert all(m.token_str in token_variants("cat") for m in matches)


def test_search_exact_side_and_sae_filters(searchable):
    session, found = searchable
    exact = search_tokens(session, "Ġcat", exact=True, limit=500).items
    assert {m.token_str for m in exact} == {"Ġcat"}
    only_s2 = all_pages(lambda **p: search_tokens(session, "cat", sae_id="s2", **p), limit=3)
    assert {(m.feature.sae_id, m.feature.index) for m in only_s2} == {
        k for k in found if k[0] == "s2"
    }
    bottom = all_pages(lambda **p: search_tokens(session, "dog", side="bottom", **p), limit=3)
    assert [m.value for m in bottom] == sorted(m.value for m in bottom)  # most negative first
    assert {m.feature.index % 6 for m in bottom} == {4}
    assert search_tokens(session, "Ġcats", limit=500).items[0].token_str == "Ġcats"
    with pytest.raises(NotFoundError):
        search_tokens(session, "cat", sae_id="nope")
    cursor = search_tokens(session, "cat", limit=1).next_cursor
    with pytest.raises(InvalidCursorError):
        search_tokens(session, "cat", side="bottom", cursor=cursor)


def _label(id_: int, source: str, score: float | None = None, age_s: int = 0) -> Label:
    created = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(seconds=age_s)
    return Label(
        id=id_, feature_id=1, text=f"l{id_}", source=source, score=score, created_at=created
    )


def test_current_label_rule():
    assert pick_current_label([]) is None
    autos = [_label(1, "auto", 0.3), _label(2, "auto", 0.9, age_s=50), _label(3, "auto", None)]
    assert pick_current_label(autos).id == 2  # best score, not newest
    assert pick_current_label([*autos, _label(4, "auto", 0.9)]).id == 4  # tie: newest
    humans = [_label(5, "human", age_s=100), _label(6, "human", age_s=10)]
    assert pick_current_label(autos + humans).id == 6  # any human beats any auto
    same_time = [_label(7, "human"), _label(8, "human")]
    assert pick_current_label(same_time).id == 8  # equal clocks: the later row
    assert pick_current_label([_label(9, "auto", None)]).id == 9


def test_strongest_features_pages_by_max_activation_with_histograms(indexed):
    session, sae, index = indexed
    order = sorted(range(D_SAE), key=lambda i: (-index.max_activation[i], i))
    got = strongest_features(session, sae.id, offset=0, limit=10) + strongest_features(
        session, sae.id, offset=10, limit=D_SAE
    )
    assert [f.index for f, _ in got] == order
    for f, histogram in got:
        assert histogram["counts"] == index.histograms[f.index].tolist()


def test_sae_lineage_reads_the_set_row_and_the_corpus_its_spec_recorded(
    session, make_sae, tmp_path
):
    from saefeat.storage.activations import ActivationSet
    from saefeat.storage.catalog.registry import register_sae
    from saefeat.storage.catalog.set_registry import record_activation_set

    sae = make_sae(session, d_sae=8)
    assert sae_lineage(session, sae, tmp_path) == SetLineage(None, None)
    corpus = [{"path": "docs/", "weight": 2}]
    aset = ActivationSet.create(
        tmp_path / "set-1.zarr", set_id="set-1", spec={"model": "m", "corpus": corpus},
        model="m", hooks=["blocks.0.hook_resid_post"], d_model=4,
        tokens=np.zeros((2, 3), dtype=np.int32), doc_index=np.zeros(2, dtype=np.int32),
        doc_offset=np.zeros(2, dtype=np.int32), doc_ids=["d"], contexts_per_shard=2,
        storage_dtype="float32", n_layers=1,
    )  # fmt: skip
    record_activation_set(session, aset)
    sae = register_sae(session, sae_id=sae.id, name=sae.name, model_name="m",
                       hook_name=sae.hook_name, architecture="topk", d_in=4, d_sae=8,
                       activation_set_id="set-1")  # fmt: skip
    session.commit()
    lineage = sae_lineage(session, sae, tmp_path)
    assert lineage.activation_set.id == "set-1" and lineage.corpus == corpus
    # The set harvested on another machine: the row, but no corpus to read.
    assert sae_lineage(session, sae, tmp_path / "elsewhere").corpus is None
