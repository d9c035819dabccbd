"""The pieces of automatic interpretation that need no model: metrics, marking, the
offline explainer, reading LLM answers, the spec's checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saefeat.errors import SpecError
from saefeat.features.records import FeatureExample
from saefeat.interp.evidence import FeatureEvidence, Window, split_examples
from saefeat.interp.explainers import (
    activation_mass,
    context_words,
    evidence_label,
    firing_phrase,
    key_words,
    label_parts,
    make_explainer,
    parse_explanation,
    query_text,
)
from saefeat.interp.judge import read_answer
from saefeat.interp.llm import ChatAnswer, LLMError, TokenChoice
from saefeat.interp.metrics import auroc, balanced_accuracy
from saefeat.interp.scorers import check_judges
from saefeat.specs import ExplainSpec


def test_auroc_and_balanced_accuracy():
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5  # ties count half
    assert auroc([2, 0], [1]) == 0.5
    # 9 negatives all right, 1 positive wrong: accuracy 0.9, balanced 0.5.
    assert balanced_accuracy([True] + [False] * 9, [False] * 10) == 0.5
    assert balanced_accuracy([True, False], [True, False]) == 1.0


def test_marked_puts_consecutive_firing_tokens_in_one_pair():
    w = Window(["a", " b", " c", " d"], [0.0, 1.0, 2.0, 0.0], 0)
    assert w.marked() == "a<< b c>> d"
    assert w.marked([True, False, False, True]) == "<<a>> b c<< d>>"


def _evidence(windows, promoted=()):
    return FeatureEvidence(3, 30, 0.01, 2.0, windows, [], list(promoted))


def test_offline_label_names_the_tokens_with_most_activation_mass():
    windows = [
        Window(["x", " f", "("], [0.0, 2.0, 0.0], 1),
        Window(["y", " f", " x"], [0.0, 1.5, 0.5], 2),
        Window(["z", " a", ","], [0.0, 0.4, 0.0], 3),
    ]
    ev = _evidence(windows, promoted=["(", "_", " ="])
    shares = dict(activation_mass(ev))
    assert max(shares, key=shares.get) == " f"
    assert evidence_label(ev) == 'fires on "f"; makes "(", "_", "=" more likely'
    assert evidence_label(_evidence(windows)) == 'fires on "f"'
    assert evidence_label(_evidence([], promoted=["(", "_"])) == 'makes "(", "_" more likely'
    assert evidence_label(_evidence([])) == "no activating tokens in its examples"
    # A pair that carries nearly all of its token's mass is named as the pair.
    pairs = [Window(["New", " York"], [0.0, 1.0], c) for c in range(3)]
    assert evidence_label(_evidence(pairs)) == 'fires on "New York"'


def test_offline_label_says_what_it_fires_on_in_which_phrase_and_what_it_makes_likely():
    """In words: the token, the phrase it fires in, what it makes more likely; the same
    word spelt with and without its leading space is named once."""
    windows = [
        Window(["(", " for", " example", ","], [0.0, 1.0, 0.0, 0.0], 1),
        Window(["s", " for", " example", " the"], [0.0, 0.9, 0.0, 0.0], 2),
        Window([" is", " for", " instance", " a"], [0.0, 0.8, 0.0, 0.0], 3),
    ]
    ev = _evidence(windows, promoted=[" example", " instance", " Example", "\n", " further"])
    assert firing_phrase(ev, " for") == " for example"  # 2 of the 3 windows
    assert firing_phrase(ev, " for", min_share=0.9) is None
    label = evidence_label(ev)
    assert label == (
        'fires on "for" in "for example"; makes "example", "instance", "further" more likely'
    )
    assert label_parts(label) == {
        "fires_on": ["for", "for example"],
        "near": [],
        "promotes": ["example", "instance", "further"],
    }
    # Not a token list: it fails if the label goes back to 'tokens: ...'.
    assert not label.startswith("tokens:") and "more likely" in label


def test_what_it_makes_likely_prefers_the_measured_effect_and_word_starts_of_a_projection():
    windows = [Window(["a", " b"], [0.0, 1.0], 1)]
    pieces = ["itoneal", " human", "ispens", " anything", " x"]
    ev = _evidence(windows, promoted=pieces)  # from the raw projection: word pieces dropped
    assert evidence_label(ev) == 'fires on "b"; makes "human", "anything" more likely'
    ev.promoted_source = "measured"  # a measured effect is named as it is
    assert evidence_label(ev) == 'fires on "b"; makes "itoneal", "human", "ispens" more likely'


def test_offline_label_adds_the_words_near_the_activations_in_several_windows():
    windows = [
        Window(["lambda", " x", ":", " y", " the"], [0.0, 0.0, 0.0, 1.0, 0.0], 1),
        Window(["return", " lambda", ":", ":", " y", " table"], [0, 0, 0, 0, 1.0, 0], 2),
        Window(["lambda", " z", ",", " y", "."], [0.0, 0.0, 0.0, 2.0, 0.0], 3),
    ]
    ev = _evidence(windows)
    # "lambda" is near " y" in all 3 windows; "return" is too far (4 tokens), "table" is
    # near in only one window, "the" is too short to say anything, " y" is named already.
    assert context_words(ev, [" y"]) == ["lambda"]
    assert context_words(ev, [" y"], min_windows=1) == ["lambda", "table"]
    assert context_words(ev, ["lambda"]) == []
    # No phrase: ": y" has no word beside " y", and " y the" / " y table" are in 1 window.
    assert evidence_label(ev) == 'fires on "y", near "lambda"'


def test_query_text_reads_a_label_as_the_words_of_where_it_fires():
    label = 'fires on "f", "New York" in "New York City", near "lambda"; makes "x" more likely'
    assert key_words(label) == ["f", "New York", "New York City"]  # not the context words
    assert query_text(label) == "f New York New York City"
    assert query_text(label + " (names of functions)") == (
        "f New York New York City names of functions"
    )
    assert key_words("Closing brackets in the Python code") == [
        "closing", "brackets", "python", "code"]  # fmt: skip
    assert query_text('makes "example", "instance" more likely') == "example instance"
    patch = 'the model reads it as "for"; the model continues it with "example", "instance"'
    assert query_text(patch) == "for example instance"
    assert label_parts(patch) == {"reads_as": ["for"], "continues": ["example", "instance"]}
    # Quoted tokens may hold the separators themselves.
    odd = 'fires on "; x", "a, near b" (a gloss; with "quotes")'
    assert label_parts(odd) == {"fires_on": ["; x", "a, near b"], "near": [],
                                "gloss": ['a gloss; with "quotes"']}  # fmt: skip
    # The offline-v2 form stored before: still read.
    old = 'tokens: " f", "New York", "\\"\\n"; near: "lambda" (names of functions)'
    assert query_text(old) == 'f New York " names of functions'
    assert query_text('promotes: " example"') == "example"
    free = 'mentions of "New York" in travel text'  # an LLM's explanation: left as it is
    assert query_text(free) == free and label_parts(free) is None


def test_offline_explainer_without_llm_has_no_gloss():
    explainer = make_explainer("offline", None)
    ev = _evidence([Window(["a", " b"], [0.0, 1.0], 1)])
    assert explainer.explain(ev) == 'fires on "b"'
    assert explainer.model is None and explainer.prompt_version == "offline-v3"


def test_split_keeps_explain_contexts_out_of_the_held_out_windows():
    def row(kind, rank, ctx, act):
        return FeatureExample(
            feature_index=0,
            rank=rank,
            activation=act,
            context_index=ctx,
            position=1,
            token_ids=[1],
            token_strs=["t"],
            values=[act],
            focus=0,
            kind=kind,
        )

    examples = [row("top", i, ctx, 5.0 - i) for i, ctx in enumerate([7, 8, 9])] + [
        row("quantile", 0, 8, 1.0),  # context 8 explained: left out
        row("quantile", 1, 20, 0.5),
        row("quantile", 2, 20, 0.4),  # one window per context
        row("quantile", 3, 21, 0.3),
    ]
    explain, held = split_examples(examples, n_explain=2)
    assert [w.context_index for w in explain] == [7, 8]
    assert [w.context_index for w in held] == [9, 20, 21]


@pytest.mark.parametrize(
    ("answer", "text"),
    [
        ("Step 1...\n[EXPLANATION]: closing brackets in code", "closing brackets in code"),
        ('"Python keywords"\nmore', "Python keywords"),
        ("[explanation] <<the>> word the", "the word the"),
    ],
)
def test_parse_explanation(answer, text):
    assert parse_explanation(answer) == text


@pytest.mark.parametrize("answer", ["", "   \n ", "[EXPLANATION]: ***", "<<>>"])
def test_an_answer_with_no_explanation_is_an_llm_error(answer):
    with pytest.raises(LLMError, match="no explanation"):
        parse_explanation(answer)


def test_read_answer_takes_the_verdict_and_p1_from_logprobs():
    tokens = [TokenChoice("1", {"1": -0.1, "0": -2.4, "Yes": -3.0})]
    verdict, p = read_answer(ChatAnswer("1", tokens))
    assert verdict is True and 0.9 < p < 0.92
    assert read_answer(ChatAnswer(" no.", None)) == (False, None)
    assert read_answer(ChatAnswer("maybe", None)) == (None, None)


def test_unknown_scorer_and_judges_without_llm_are_refused():
    with pytest.raises(ValidationError, match="'vibes' is not a scorer"):
        ExplainSpec(sae="s", scorers=["embedding", "vibes"])
    with pytest.raises(SpecError, match="scorers: 'detection' needs a judge LLM"):
        check_judges(["detection"], has_llm=False)
    with pytest.raises(SpecError, match="explainer: 'llm' needs an endpoint"):
        make_explainer("llm", None)
    with pytest.raises(ValidationError, match="'gpt' is not an explainer"):
        ExplainSpec(sae="s", explainer="offline,gpt")
    assert ExplainSpec(sae="s").explainers == ["offline", "patchscope"]  # the default
    assert ExplainSpec(sae="s", explainer="llm, offline").explainer == "offline,llm"
    assert ExplainSpec(sae="s", scorers=["activation", "embedding"]).scorers == [
        "embedding",
        "activation",
    ]
