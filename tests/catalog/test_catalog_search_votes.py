"""Label full-text search, votes and the current-label rule, labelled filter, neighbours;
on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from paging import all_pages
from sqlalchemy import select
from synthetic_catalog import synthetic_feature_index

from saefeat.errors import NotFoundError, SpecError
from saefeat.storage.catalog.db import make_engine, make_sessionmaker
from saefeat.storage.catalog.feature_reads import feature_neighbours
from saefeat.storage.catalog.label_search import search_labels
from saefeat.storage.catalog.labels import add_label, current_label, vote_label
from saefeat.storage.catalog.models import Feature, LabelVote
from saefeat.storage.catalog.queries import get_feature, list_features
from saefeat.storage.catalog.search_syntax import parse_query
from saefeat.storage.catalog.writer import write_feature_index

TEXTS = {
    0: "closing brackets in Python code",
    1: "the word cat in stories",
    2: "New York city names",
    3: "cats and dogs",
    4: "python imports",
}


@pytest.fixture
def labelled(session, make_sae):
    sae = make_sae(session, d_sae=16)
    write_feature_index(session, sae.id, synthetic_feature_index(16, seed=3))
    for index, text in TEXTS.items():
        add_label(session, get_feature(session, sae.id, index), text=text, author="t")
    session.commit()
    return sae


def _found(session, q, **kw) -> list[int]:
    return [m.feature.index for m in search_labels(session, q, **kw).items]


def test_label_search_words_phrases_or_not_prefix(session, labelled):
    assert sorted(_found(session, "python")) == [0, 4]
    assert _found(session, "python -imports") == [0]
    assert _found(session, '"new york"') == [2]
    assert _found(session, '"york new"') == []
    assert sorted(_found(session, "brackets OR dogs")) == [0, 3]
    assert sorted(_found(session, "cat*")) == [1, 3]
    assert _found(session, "bracket") == [0]  # stemmed on both databases


def test_label_search_pages_and_newest_label_once(session, labelled):
    feature = get_feature(session, labelled.id, 4)
    add_label(session, feature, text="python standard library imports")
    session.commit()
    first = search_labels(session, "python", limit=1)
    assert [m.feature.index for m in first.items] == [4]
    assert first.items[0].label.text == "python standard library imports"
    second = search_labels(session, "python", limit=1, cursor=first.next_cursor)
    assert [m.feature.index for m in second.items] == [0]
    assert second.next_cursor is None


@pytest.mark.parametrize("q", ['"open', "OR cat", "cat OR", "-cat", "***", "", "x" * 300])
def test_malformed_search_is_a_spec_error_naming_q(session, labelled, q):
    with pytest.raises(SpecError) as info:
        search_labels(session, q)
    assert info.value.field == "q"


def test_search_syntax_never_reaches_the_database_as_an_operator(session, labelled):
    # FTS5 would read NEAR(, column filters and ^ as syntax; quoted, they are just words.
    for q in ["NEAR(cat dog)", "text:cat", "^cat", "cat AND", "(cat", "cat'", "c@t:"]:
        search_labels(session, q)  # no database error
    assert parse_query("NEAR(cat dog)")[0][0].words == ("near", "cat")


def test_votes_decide_whether_a_human_label_stands(session, labelled):
    feature = get_feature(session, labelled.id, 5)
    auto = add_label(session, feature, text="auto guess", source="auto", score=0.8)
    human = add_label(session, feature, text="person's label", source="human")
    session.commit()
    assert current_label(session, feature.id).id == human.id
    vote_label(session, human.id, voter="a", value=-1)
    assert current_label(session, feature.id).id == auto.id  # voted down: not accepted
    totals = vote_label(session, human.id, voter="b", value=1)
    assert (totals.up, totals.down) == (1, 1)
    assert current_label(session, feature.id).id == human.id  # net 0 stands
    totals = vote_label(session, human.id, voter="a", value=1)  # a changes their mind
    assert (totals.up, totals.down) == (2, 0)
    with pytest.raises(SpecError):
        vote_label(session, human.id, voter="a", value=0)
    with pytest.raises(NotFoundError):
        vote_label(session, 10**9, voter="a", value=1)


def test_labelled_filter(session, labelled):
    def indices(**kw):
        page = list_features(session, labelled.id, limit=100, **kw)
        return {f.index for f in page.items}

    assert indices(labelled=True) == set(TEXTS)
    assert indices(labelled=False) == set(range(16)) - set(TEXTS)
    assert len(indices()) == 16


def test_neighbours_are_stored_with_feature_ids(session, make_sae):
    sae = make_sae(session, d_sae=12)
    index = synthetic_feature_index(12, seed=4, n_neighbours=3)
    summary = write_feature_index(session, sae.id, index)
    assert summary.n_neighbours == 36
    feature = get_feature(session, sae.id, 7)
    near = feature_neighbours(session, feature.id)
    assert [n.feature.index for n in near] == index.neighbour_indices[7].tolist()
    np.testing.assert_allclose([n.cosine for n in near], index.neighbour_cosines[7])
    # Re-indexing replaces them; -1 means "no neighbour" and stores nothing.
    index.neighbour_indices[7] = -1
    write_feature_index(session, sae.id, index)
    assert feature_neighbours(session, feature.id) == []
    assert session.scalar(select(Feature.id).where(Feature.index == 7)) == feature.id


def test_neighbour_shape_is_checked(session, make_sae):
    sae = make_sae(session, d_sae=8)
    index = synthetic_feature_index(8, seed=5)
    index.neighbour_indices = index.neighbour_indices[:, :2] + 100
    index.neighbour_cosines = index.neighbour_cosines[:, :2]
    with pytest.raises(SpecError, match="-1 or 0..7"):
        write_feature_index(session, sae.id, index)


def test_label_search_pages_match_the_rule_over_many_labels(session, make_sae, monkeypatch):
    """Many labels per feature, pages smaller than the read batches and larger, matches in
    another SAE mixed in: every matching feature of the SAE once, ordered by its newest
    matching label, across all pages (on PostgreSQL through both the recent-id walk and
    the GIN index)."""
    from saefeat.storage.catalog import label_search

    monkeypatch.setattr(label_search, "FIRST_BATCH", 3)  # several growing batches
    monkeypatch.setattr(label_search, "RECENT_LABELS", 40)
    sae, other = make_sae(session, d_sae=40), make_sae(session, d_sae=40, sae_id="sae-b")
    for s in (sae, other):
        write_feature_index(session, s.id, synthetic_feature_index(40, seed=6))
    rng = np.random.default_rng(0)
    newest: dict[int, int] = {}
    for _ in range(200):
        index, mine = int(rng.integers(0, 40)), rng.random() < 0.75
        text = "python code" if rng.random() < 0.5 else "plain prose"
        feature = get_feature(session, (sae if mine else other).id, index)
        label = add_label(session, feature, text=text, author="t")
        if text == "python code" and mine:
            newest[index] = label.id
    session.commit()
    expected = sorted(newest, key=lambda i: -newest[i])
    for limit in (1, 4, 50):
        pages = all_pages(lambda **p: search_labels(session, "python", sae_id=sae.id, **p), limit)
        assert [(m.feature.index, m.label.id) for m in pages] == [(i, newest[i]) for i in expected]


def test_twenty_parallel_votes_from_one_voter_leave_one_vote(db_url, make_sae):
    """A vote is an upsert: concurrent votes of one key never collide (IntegrityError)."""
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        sae = make_sae(session, d_sae=4)
        write_feature_index(session, sae.id, synthetic_feature_index(4, seed=1))
        label = add_label(session, get_feature(session, sae.id, 0), text="x", author="t")
        session.commit()
        label_id = label.id
    start = threading.Barrier(20)

    def vote(n: int) -> None:
        with sessions() as session:
            start.wait()
            vote_label(session, label_id, voter="key 1", value=1 if n % 2 else -1)
            session.commit()

    try:
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(vote, range(20)))  # re-raises any thread's error
        with sessions() as session:
            rows = session.scalars(select(LabelVote).where(LabelVote.label_id == label_id))
            assert [r.voter for r in rows] == ["key 1"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("text", ["a\x00b", "lone \ud800"])
def test_label_text_neither_database_can_hold_is_a_spec_error(session, labelled, text):
    feature = get_feature(session, labelled.id, 0)
    with pytest.raises(SpecError) as caught:
        add_label(session, feature, text=text)
    assert caught.value.field == "text"


def test_label_search_reads_a_bounded_number_of_matches(session, make_sae):
    sae = make_sae(session, d_sae=12)
    write_feature_index(session, sae.id, synthetic_feature_index(12, seed=2))
    for index in range(12):
        add_label(session, get_feature(session, sae.id, index), text=f"python {index}")
    session.commit()
    first = search_labels(session, "python", limit=4, max_scan=6)
    assert len(first.items) == 4 and first.next_cursor
    # The next page would read the 4 matches above it and 3 more: past the bound, it
    # answers with what it found and a cursor to go on.
    second = search_labels(session, "python", limit=4, cursor=first.next_cursor, max_scan=6)
    assert len(second.items) == 2 and second.next_cursor
    with pytest.raises(SpecError, match="more than 6 labels") as caught:
        search_labels(session, "python", limit=4, cursor=second.next_cursor, max_scan=6)
    assert caught.value.field == "q"
    everything = search_labels(session, "python", limit=12)
    assert len(everything.items) == 12 and everything.next_cursor is None


@pytest.mark.parametrize("score", [1e308, -1.5, 1.01, float("nan"), float("inf")])
def test_a_label_score_out_of_range_is_refused_from_any_writer(session, labelled, score):
    """The API bounds scores it is sent; the catalog bounds every writer's (an import, an
    explainer): nothing outside [-1, 1] is stored."""
    feature = get_feature(session, "sae-a", 2)
    with pytest.raises(SpecError) as err:
        add_label(session, feature, text="x", source="auto", score=score)
    assert err.value.field == "score"
    kept = add_label(session, feature, text="a correlation", source="auto", score=-0.25)
    assert kept.score == -0.25
