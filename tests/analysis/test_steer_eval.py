"""The steering measurements the benchmark calls (analysis/steer_eval.py), on the tiny
Llama with a registered, indexed SAE: they run and report what they say."""

from __future__ import annotations

import pytest

from saefeat.analysis import steer_eval
from saefeat.config import get_settings
from saefeat.storage.catalog import queries
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.labels import add_label
from saefeat.storage.catalog.writer import write_feature_index


@pytest.fixture
def home(tiny_sae_home):
    from synthetic_catalog import synthetic_feature_index

    tiny_sae_home("ev")
    index = synthetic_feature_index(96, n_examples=2, n_quantile=0, dead_fraction=0, seed=1)
    with catalog_session(get_settings()) as s:
        write_feature_index(s, "ev", index)
        add_label(s, queries.get_feature(s, "ev", 3), text='tokens: " def"; near: "x"',
                  author="ada")  # fmt: skip
        s.commit()


def test_label_quoted_tokens_stop_at_near():
    text = 'tokens: " function", " Function", "\\"q"; near: "object", "user"'
    assert steer_eval.label_quoted_tokens(text) == [" function", " Function", '"q']


def test_concept_success_reports_each_feature(home):
    """Clamping high raises a feature's promoted tokens (the direct path: a random SAE has
    no other meaning); the label source reads the label's quoted tokens."""
    with catalog_session(get_settings()) as s:
        done = steer_eval.steer_concept_success(
            s, "ev", features=[3, 5], strength=8.0, source="promoted", max_new_tokens=4,
            prompts=("def f(x):",),
        )  # fmt: skip
        assert [t.index for t in done.trials] == [3, 5] and done.n == 2
        assert all(t.source == "promoted" and len(t.targets) == 5 for t in done.trials)
        assert done.share == sum(t.raised for t in done.trials) / 2 == 1.0
        label = steer_eval.steer_concept_success(s, "ev", features=[3], source="label",
                                                 max_new_tokens=2, prompts=("x",))  # fmt: skip
        assert label.trials[0].source == "label" and label.trials[0].targets == [" def"]


def test_speed_is_measured_against_plain_generation(home):
    with catalog_session(get_settings()) as s:
        speed = steer_eval.steer_speed_for_sae(s, "ev", feature=5, n_tokens=4, repeats=1)
    assert speed.plain_tok_s > 0 and speed.steered_tok_s > 0 and speed.cold_tok_s > 0
    assert speed.steer_tok_s_over_generate == speed.steered_tok_s / speed.plain_tok_s
    assert set(speed.samples) == {"plain", "loop", "steered", "cold"} and speed.loop_tok_s > 0
