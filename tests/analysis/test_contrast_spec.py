"""What a ContrastSpec refuses before anything runs: each error names its field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saefeat.specs import ContrastSpec


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"b": "as-a"}, "b"),  # the same set twice
        ({"seed": -1}, "seed"),  # sklearn's random_state: failed after the SAE pass
        ({"seed": 10**35}, "seed"),  # stored as a float, unreadable when the job ran
        ({"batch_contexts": 10**20}, "batch_contexts"),
    ],
)
def test_bad_spec_names_the_field(overrides, field):
    with pytest.raises(ValidationError) as err:
        ContrastSpec(**({"sae": "sae-x", "a": "as-a", "b": "as-b"} | overrides))
    assert [e["loc"] for e in err.value.errors()] == [(field,)]


def test_the_id_follows_what_decides_the_stored_result():
    spec = {"sae": "sae-x", "a": "as-a", "b": "as-b"}
    base = ContrastSpec(**spec).contrast_id()
    # alpha decides the significant counts and top lists: another alpha used to rerun
    # under the same id and replace the first caller's results.
    assert ContrastSpec(**spec, alpha=0.01).contrast_id() != base
    assert ContrastSpec(**spec, top=5, batch_contexts=8).contrast_id() == base


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"a": "as-a"}, "b_corpus", "needs b"),  # a side left out
        ({"a": "as-a", "b": "as-b", "b_corpus": "b.txt"}, "b_corpus", "not both"),
        ({"a_corpus": "x.txt", "b_corpus": ["x.txt"]}, "b_corpus", "same corpus"),
        ({"a_corpus": [], "b": "as-b"}, "a_corpus", "at least 1"),
    ],
)
def test_each_side_is_a_set_or_text_sources(fields, field, words):
    with pytest.raises(ValidationError) as err:
        ContrastSpec(sae="sae-x", **fields)
    assert [e["loc"] for e in err.value.errors()] == [(field,)]
    assert words in str(err.value)


def test_corpus_sides_join_the_id_only_when_given():
    sets = ContrastSpec(sae="sae-x", a="as-a", b="as-b")
    # token_budget only says how much of a corpus to harvest: at its default, set-id
    # contrasts keep their ids (tests/test_specs.py has the legacy recipe).
    assert "a_corpus" not in sets.id_data() and "token_budget" not in sets.id_data()
    text = ContrastSpec(sae="sae-x", a_corpus="a.txt", b="as-b")
    assert text.corpus_sides() == ["a"]
    assert text.a_corpus[0].path == "a.txt"
    assert text.contrast_id() != ContrastSpec(sae="sae-x", a_corpus="c.txt", b="as-b").contrast_id()
    assert (
        text.contrast_id()
        != ContrastSpec(sae="sae-x", a_corpus="a.txt", b="as-b", token_budget=5000).contrast_id()
    )
