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
