"""Automatic explanations in the catalog (revision 0008): written whole, read back with
their scores, the current-label rule, label search ranked and filtered by score; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import pytest
from paging import all_pages
from synthetic_catalog import synthetic_feature_index

from saefeat.errors import SpecError
from saefeat.storage.catalog.explanations import (
    ScoreIn,
    explained_indices,
    feature_explanations,
    write_explanation,
)
from saefeat.storage.catalog.label_search import search_labels
from saefeat.storage.catalog.labels import add_label, current_label
from saefeat.storage.catalog.queries import get_feature
from saefeat.storage.catalog.writer import write_feature_index

# feature index -> (text, detection, embedding); the headline is their mean
AUTO = {
    0: ('tokens: " (" python calls', 0.9, 0.95),  # 0.925
    1: ("python imports", 0.6, 0.7),  # 0.65
    2: ("python keywords", 0.75, 0.67),  # 0.71
    3: ("dogs", 0.8, 0.8),
}


def _explain(session, sae_id, index, text, detection, embedding, prompt="v1"):
    fid = get_feature(session, sae_id, index).id
    return write_explanation(
        session,
        fid,
        text=text,
        explainer="offline",
        explainer_model=None,
        prompt_version=prompt,
        evidence={"explained_from": [{"context": 1, "kind": "top", "text": "x"}]},
        scores=[
            ScoreIn("detection", detection, 10, {"auroc": 0.5}, "judge"),
            ScoreIn("embedding", embedding, 30, {"positives": []}, "all-MiniLM-L6-v2"),
        ],
    )


@pytest.fixture
def explained(session, make_sae):
    sae = make_sae(session, d_sae=16)
    write_feature_index(session, sae.id, synthetic_feature_index(16, seed=3))
    for index, row in AUTO.items():
        _explain(session, sae.id, index, *row)
    session.commit()
    return sae


def test_explanations_read_back_with_scores(session, explained):
    fid = get_feature(session, explained.id, 0).id
    (ex,) = feature_explanations(session, fid)
    assert ex.text == AUTO[0][0] and ex.explainer == "offline" and ex.prompt_version == "v1"
    assert ex.evidence["explained_from"][0]["context"] == 1
    assert {(s.type, s.value, s.n) for s in ex.scores} == {
        ("detection", 0.9, 10),
        ("embedding", 0.95, 30),
    }
    label = current_label(session, fid)
    # The auto label carries its headline score: the mean of its scores.
    assert label.source == "auto" and label.author == "offline"
    assert label.score == pytest.approx(0.925)
    assert explained_indices(session, explained.id, "offline", "v1") == set(AUTO)
    assert explained_indices(session, explained.id, "offline", "v2") == set()


def test_a_human_label_still_wins_and_the_best_auto_label_is_next(session, explained):
    feature = get_feature(session, explained.id, 1)
    _explain(session, explained.id, 1, "python import lines", 0.95, 0.5, prompt="v2")
    session.commit()
    assert current_label(session, feature.id).text == "python import lines"
    add_label(session, feature, text="import statements", author="ann")
    session.commit()
    assert current_label(session, feature.id).text == "import statements"


def _found(session, q, **kw) -> list[int]:
    return [m.feature.index for m in search_labels(session, q, **kw).items]


def test_label_search_sorts_and_filters_by_score(session, explained):
    assert _found(session, "python", sort="score") == [0, 2, 1]
    assert _found(session, "python", sort="score", score_type="embedding") == [0, 1, 2]
    assert _found(session, "python", min_score=0.7) == [2, 0]  # newest first
    assert _found(session, "python", sort="score", min_score=0.7) == [0, 2]
    assert _found(session, "python", score_type="embedding", min_score=0.9) == [0]
    # Pages: one at a time, no feature twice, the same order.
    pages = all_pages(lambda **p: search_labels(session, "python", sort="score", **p), limit=1)
    assert [m.feature.index for m in pages] == [0, 2, 1]


def test_a_feature_counts_once_at_its_best_scored_label(session, explained):
    _explain(session, explained.id, 1, "python import lines", 0.99, 0.97, prompt="v2")
    session.commit()
    assert _found(session, "python", sort="score") == [1, 0, 2]
    page = search_labels(session, "python", sort="score", limit=5)
    assert page.items[0].label.text == "python import lines"


def test_unknown_score_type_is_a_spec_error(session, explained):
    with pytest.raises(SpecError, match="score_type"):
        search_labels(session, "python", score_type="vibes")
