"""Issue 21: artifact flags, fired tokens, token search by fires/effect, phrase search over
top-example text and the duplicate-window count, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from paging import all_pages
from synthetic_catalog import synthetic_feature_index

from saefeat.errors import SpecError
from saefeat.features.records import FeatureExample, FiredTokenShare
from saefeat.storage.catalog.example_search import duplicate_top_windows, search_phrase
from saefeat.storage.catalog.models import Feature, FiredToken, TokenEffect
from saefeat.storage.catalog.queries import (
    count_artifacts,
    get_feature,
    list_features,
    strongest_features,
)
from saefeat.storage.catalog.token_search import search_tokens
from saefeat.storage.catalog.writer import write_feature_index

D_SAE = 12


def window(f, rank, text, focus, ctx, pos, act):
    tokens = text.split("|")
    return FeatureExample(f, rank, act, ctx, pos, list(range(len(tokens))), tokens,
                          [0.0] * len(tokens), focus, "top")  # fmt: skip


def readable_index():
    index = synthetic_feature_index(D_SAE, seed=3, dead_fraction=0.0)
    index.max_activation[:] = [float(20 - i) for i in range(D_SAE)]  # feature 0 strongest
    index.artifacts = [None] * D_SAE
    index.artifacts[0] = "after special token '<|im_start|>'"
    index.artifacts[5] = "position <= 2"
    index.fired_tokens = [
        FiredTokenShare(1, 0, " cat", 0.9), FiredTokenShare(1, 1, " dog", 0.1),
        FiredTokenShare(2, 0, "Cat", 0.4), FiredTokenShare(2, 1, " cat", 0.6),
        FiredTokenShare(3, 0, " the", 1.0), FiredTokenShare(4, 0, "▁cat", 0.3),
        FiredTokenShare(6, 0, " cat", 0.2),
    ]  # fmt: skip
    index.examples = [
        window(1, 0, "We|'re| in| New| York| today", 3, 10, 40, 5.0),
        window(1, 1, "a| new| york|er", 2, 11, 3, 4.0),  # case-insensitive match
        window(2, 0, "I| love| new| york", 0, 12, 9, 3.0),  # phrase away from the focus
        window(3, 0, "100|%| of| New| York", 4, 13, 7, 2.0),
        window(4, 0, "50|%| off", 1, 14, 7, 2.0),
        window(7, 0, "same| text| here", 1, 20, 5, 3.0),
        window(7, 1, "same| text| here", 1, 21, 5, 2.5),  # the same window again
        window(7, 2, "text| here| and", 1, 20, 6, 2.0),  # one token on in context 20
        window(8, 0, "same| text| here", 1, 22, 5, 1.0),  # another feature: no repeat
    ]
    index.logit_histograms = [[1, 2, 3]] * D_SAE
    index.logit_ranges = [[-1.5, 2.5]] * D_SAE
    index.n_quantile_bins = 10
    return index


@pytest.fixture
def indexed(session, make_sae):
    make_sae(session, d_sae=D_SAE)
    write_feature_index(session, "sae-a", readable_index())
    return session


def test_the_writer_stores_flags_fired_tokens_and_histogram_extras(indexed):
    s = indexed
    assert get_feature(s, "sae-a", 0).artifact == "after special token '<|im_start|>'"
    assert get_feature(s, "sae-a", 1).artifact is None
    assert count_artifacts(s, "sae-a") == 2
    histogram = get_feature(s, "sae-a", 2).histogram
    assert histogram["quantile_bins"] == 10
    assert histogram["logits"] == {"min": -1.5, "max": 2.5, "counts": [1, 2, 3]}
    assert s.query(FiredToken).count() == 7
    # Re-indexing replaces them (ids stay, so nothing is left behind).
    again = readable_index()
    again.fired_tokens = again.fired_tokens[:2]
    again.artifacts = None
    write_feature_index(s, "sae-a", again)
    assert s.query(FiredToken).count() == 2 and count_artifacts(s, "sae-a") == 0


def test_artifacts_leave_sorted_lists_by_default(indexed):
    s = indexed
    default = [f.index for f in list_features(s, "sae-a", limit=50).items]
    assert 0 not in default and 5 not in default and len(default) == D_SAE - 2
    every = list_features(s, "sae-a", limit=50, artifacts="include").items
    assert [f.index for f in every][0] == 0 and len(every) == D_SAE
    only = list_features(s, "sae-a", limit=50, artifacts="only").items
    assert {f.index: f.artifact for f in only} == {0: "after special token '<|im_start|>'",
                                                  5: "position <= 2"}  # fmt: skip
    strongest = [f.index for f, _ in strongest_features(s, "sae-a", offset=0, limit=3)]
    assert strongest == [1, 2, 3]
    with pytest.raises(SpecError) as bad:
        list_features(s, "sae-a", artifacts="some")
    assert bad.value.field == "artifacts"


def test_search_by_fired_tokens(indexed):
    s = indexed
    page = search_tokens(s, "cat", by="fires", limit=10)
    # Every leading-space spelling counts; one row per feature at its largest share.
    assert [(m.feature.index, m.token_str, m.value) for m in page.items] == [
        (1, " cat", 0.9),
        (2, " cat", 0.6),
        (4, "▁cat", 0.3),
        (6, " cat", 0.2),
    ]
    assert all(m.token_id == -1 for m in page.items)
    assert [m.feature.index for m in search_tokens(s, " cat", by="fires", exact=True).items] == [
        1,
        2,
        6,
    ]
    # Pages of one follow each other without repeats.
    pages = all_pages(lambda **p: search_tokens(s, "cat", by="fires", **p), limit=1)
    assert [m.feature.index for m in pages] == [1, 2, 4, 6]
    assert search_tokens(s, "cat", by="fires", sae_id="sae-a").items
    with pytest.raises(SpecError) as bad:
        search_tokens(s, "cat", by="smell")
    assert bad.value.field == "by"


def test_search_by_measured_effect(indexed):
    s = indexed
    ids = {f.index: f.id for f in s.query(Feature).filter(Feature.sae_id == "sae-a")}
    s.add_all([
        TokenEffect(feature_id=ids[3], method="measured", side="up", rank=0, token_id=7,
                    token_str=" cat", value=0.8),
        TokenEffect(feature_id=ids[9], method="measured", side="up", rank=2, token_id=7,
                    token_str="cat", value=1.2),
        TokenEffect(feature_id=ids[8], method="measured", side="down", rank=0, token_id=7,
                    token_str=" cat", value=-2.0),
        TokenEffect(feature_id=ids[10], method="debiased", side="up", rank=0, token_id=7,
                    token_str=" cat", value=9.0),
    ])  # fmt: skip
    s.commit()
    page = search_tokens(s, "cat", by="effect")
    assert [(m.feature.index, m.value, m.rank) for m in page.items] == [(9, 1.2, 2), (3, 0.8, 0)]
    # promotes is the vocabulary projection, as before.
    assert search_tokens(s, "cat", by="promotes").items is not None


def test_phrase_search(indexed):
    s = indexed
    page = search_phrase(s, "new york")
    # Over the focus token only: feature 2's window has it, but not where it fires.
    assert [(m.feature.index, m.rank) for m in page.items] == [(1, 0), (3, 0)]
    assert page.items[0].token_strs[page.items[0].focus] == " New"
    anywhere = search_phrase(s, "NEW YORK", anywhere=True)
    assert [m.feature.index for m in anywhere.items] == [1, 2, 3]
    # % and _ are plain characters.
    assert [m.feature.index for m in search_phrase(s, "%", anywhere=True).items] == [3, 4]
    assert search_phrase(s, "_").items == []
    # Paging, and a scan bound that cuts a page short without losing or repeating a match.
    pages = all_pages(lambda **p: search_phrase(s, "york", anywhere=True, max_scan=2, **p), 1)
    assert [m.feature.index for m in pages] == [1, 2, 3]
    assert [m.feature.index for m in search_phrase(s, "york", sae_id="sae-a").items] == [1, 3]
    for bad in ("", "   ", "x" * 201):
        with pytest.raises(SpecError) as err:
            search_phrase(s, bad)
        assert err.value.field == "phrase"


def test_duplicate_top_windows(indexed):
    # Feature 7: the same tokens in another context, and one token on in the same one.
    assert duplicate_top_windows(indexed, "sae-a") == 2


def test_the_neuronpedia_export_carries_the_logit_histogram(indexed, tmp_path):
    import gzip
    import json

    from saefeat.storage.catalog.neuronpedia import export_neuronpedia

    folder = export_neuronpedia(indexed, "sae-a", tmp_path / "np")
    with gzip.open(next((folder / "features").glob("*.jsonl.gz")), "rt") as f:
        record = json.loads(f.readline())
    assert record["logits_hist_data_bar_heights"] == [1.0, 2.0, 3.0]
    # Bar centres of three equal bins over [-1.5, 2.5].
    assert record["logits_hist_data_bar_values"] == pytest.approx([-5 / 6, 0.5, 11 / 6])
