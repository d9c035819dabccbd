"""Issue 21's explainers and scores: the Patchscope explainer on a tiny real Llama, every
scorer's output in [0, 1] (and able to be low), the best-scored explanation shown, and
the own-vs-neighbour check's arithmetic on a synthetic case."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from saefeat.interp.checks import discriminate
from saefeat.interp.evidence import FeatureEvidence, Window
from saefeat.interp.judge import DetectionScorer, FuzzingScorer
from saefeat.interp.llm import ChatAnswer, TokenChoice
from saefeat.interp.patchscope import PatchscopeExplainer, Subject, patchscope
from saefeat.interp.pool import ScoringPool
from saefeat.interp.scorers import (
    ActivationScorer,
    EmbeddingCache,
    EmbeddingScorer,
    KeywordScorer,
)
from saefeat.lm import load_model
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE
from saefeat.storage.catalog.explanations import (
    SCORE_MEANINGS,
    SCORE_TYPES,
    ScoreIn,
    headline_score,
)
from saefeat.storage.catalog.labels import LabelView, pick_current_label

HOOK = "blocks.1.hook_resid_post"  # two random blocks still run after the patch


# ---- Patchscope on the tiny Llama -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_llama):
    return load_model(str(tiny_llama))


def _word_tokens(lm, n: int) -> list[int]:
    """n token ids that spell a word of 3+ letters (nameable by the explainer)."""
    out = []
    for i in range(lm.tokenizer.vocab_size):
        text = lm.tokenizer.decode([i])
        if text.strip().isalpha() and len(text.strip()) >= 3:
            out.append(i)
        if len(out) == n:
            return out
    raise AssertionError("the tiny tokenizer has too few words")


def _unembedding_rows(lm, ids: list[int]) -> torch.Tensor:
    """Each token's output-embedding row divided by the final norm's scale: a residual
    direction the model reads out as that token."""
    W_U, scale = lm.unembedding()
    rows = W_U[ids]
    return rows / scale if scale is not None else rows


def test_patchscope_says_the_token_whose_direction_is_patched_in(tiny_lm):
    ids = _word_tokens(tiny_lm, 4)
    directions = _unembedding_rows(tiny_lm, ids)
    directions = directions / directions.norm(dim=1, keepdim=True)
    readouts = patchscope(tiny_lm, HOOK, directions)
    for token_id, r in zip(ids, readouts, strict=True):
        word = tiny_lm.tokenizer.decode([token_id]).strip()
        assert r.continues and r.continues[0].strip().startswith(word), (word, r.continues)
        assert r.kl > 1e-3  # the patch moved the model (a random one: flat logits)
    # It can fail: without the patch (a zero direction) the model says none of them.
    (silent,) = patchscope(tiny_lm, HOOK, torch.zeros(1, directions.shape[1]))
    said = {w.strip() for w in silent.continues}
    assert not said & {tiny_lm.tokenizer.decode([i]).strip() for i in ids}
    assert silent.kl < 1e-6
    # ...and a token's direction does not make it say another token.
    assert (
        not readouts[0].continues[0].strip().startswith(tiny_lm.tokenizer.decode([ids[1]]).strip())
    )


def test_patchscope_explainer_reads_the_sae_checkpoint_and_writes_words(tiny_llama, tiny_lm,
                                                                          tmp_path):  # fmt: skip
    """The explainer as a job runs it: decoder rows from the checkpoint, scaled by each
    feature's max activation, a sentence of the words the model says."""
    ids = _word_tokens(tiny_lm, 3)
    rows = _unembedding_rows(tiny_lm, ids)
    d_in = rows.shape[1]
    sae = TopKSAE(SAEConfig(d_in=d_in, d_sae=4, k=2, model=str(tiny_llama), hook=HOOK))
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.W_dec[:3] = rows / rows.norm(dim=1, keepdim=True)  # feature 3 is dead: a zero row
    checkpoint = sae.save(tmp_path / "sae")
    explainer = PatchscopeExplainer(Subject(str(tiny_llama), None, str(checkpoint), HOOK, 1.0))
    evidence = [FeatureEvidence(i, i, 0.1, 1.0, [], []) for i in range(4)]
    texts = explainer.explain_many(evidence)
    for token_id, text in zip(ids, texts[:3], strict=True):
        word = tiny_lm.tokenizer.decode([token_id]).strip()
        assert isinstance(text, str) and text.startswith("the model ")
        assert f'"{word}' in text, (word, text)
    assert isinstance(texts[3], str)  # a zero row still gets words, but not the others'
    assert not any(f'"{tiny_lm.tokenizer.decode([i]).strip()}' in texts[3] for i in ids)
    assert explainer.name == "patchscope" and explainer.prompt_version == "patchscope-v1"


# ---- scorers: one scale, and able to be low ----------------------------------------------


class WordEncoder:
    """A bag-of-words sentence encoder (hashed words, unit length): enough to rank texts
    by shared words, with no model to load."""

    name = "bag-of-words"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace('"', " ").split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


TOPICS = ("cats purr softly", "dogs bark loudly", "ships sail north", "bread bakes slowly")


def _pool(encoder: WordEncoder) -> ScoringPool:
    """40 windows, 10 per topic; feature f fires on topic f's windows (strongest first)."""
    texts = [f"{TOPICS[t]} window {i}" for t in range(4) for i in range(10)]
    acts = np.zeros((40, 4), np.float32)
    for t in range(4):
        acts[10 * t : 10 * t + 10, t] = np.linspace(2.0, 1.0, 10)
    contexts = np.arange(40) + 1000
    return ScoringPool(texts, contexts, acts, encoder.encode(texts), encoder.name)


def _feature(f: int) -> FeatureEvidence:
    words = TOPICS[f].split()
    explain = [Window(words, [0.0, 1.0, 0.0], c) for c in range(3)]
    held = [Window(words + [f" held {c}"], [0.0, 1.0, 0.0, 0.0], 100 + c) for c in range(4)]
    return FeatureEvidence(f, f, 0.25, 2.0, explain, held)


class CoinJudge:
    """A fake judge LLM: says 1 when the explanation's first word is in the window."""

    model = "coin"

    def chat(self, messages, max_tokens=3, logprobs=False):
        text = messages[-1]["content"]
        first = text.split("\n")[0].split()[-1].strip('"').lower() if text else ""
        yes = first and first in text.lower().split("\n", 1)[-1]
        p = 0.9 if yes else 0.1
        top = {"1": math.log(p), "0": math.log(1 - p)}
        return ChatAnswer("1" if yes else "0", [TokenChoice("1" if yes else "0", top)])


@pytest.mark.parametrize("seed", range(3))
def test_every_scorer_gives_a_value_in_the_unit_interval(seed):
    encoder = WordEncoder()
    pool = _pool(encoder)
    embed = EmbeddingCache(encoder)
    scorers = [
        EmbeddingScorer(embed, seed=seed),
        ActivationScorer(embed, n_retrieved=10),
        KeywordScorer(seed=seed),
        DetectionScorer(CoinJudge(), seed=seed),
        FuzzingScorer(CoinJudge(), seed=seed),
    ]
    rng = np.random.default_rng(seed)
    words = " ".join(TOPICS).split()
    for f in range(4):
        for text in [TOPICS[f], TOPICS[(f + 1) % 4], " ".join(rng.choice(words, 3)), "zzz"]:
            for scorer in scorers:
                score = scorer.score(text, _feature(f), pool)
                assert score.type in SCORE_TYPES and 0.0 <= score.value <= 1.0, (
                    scorer.name, text, score.value)  # fmt: skip
                assert math.isfinite(score.value)
    assert set(SCORE_MEANINGS) >= set(SCORE_TYPES)
    assert all("0.5" in SCORE_MEANINGS[t] for t in SCORE_TYPES)  # each says where chance is


def test_the_activation_score_is_an_auroc_that_can_be_low():
    """Right explanation: the retrieved windows are where the feature fires (1.0); an
    explanation of another feature retrieves silent windows (below chance)."""
    encoder = WordEncoder()
    pool = _pool(encoder)
    scorer = ActivationScorer(EmbeddingCache(encoder), n_retrieved=10)
    right = scorer.score("cats purr", _feature(0), pool)
    wrong = scorer.score("dogs bark", _feature(0), pool)
    assert right.value == 1.0 and right.details["retrieved_firing"] == 10
    assert wrong.value < 0.5 and wrong.details["retrieved_firing"] == 0


def test_the_keyword_score_finds_the_named_words_where_the_feature_fires():
    pool = _pool(WordEncoder())
    scorer = KeywordScorer()
    assert scorer.score('fires on "cats", "purr"', _feature(0), pool).value == 1.0
    assert scorer.score('fires on "dogs"', _feature(0), pool).value < 0.5  # in silent windows
    assert scorer.score('fires on "zebra"', _feature(0), pool).value == 0.5  # nowhere: chance
    # A word start is enough: "cat" finds "cats".
    hits = scorer.score('fires on "cat"', _feature(0), pool)
    assert hits.value == 1.0 and hits.details["words"]


# ---- the explanation shown is the best scored --------------------------------------------


def test_the_headline_is_the_mean_of_the_unit_scores_and_the_best_is_shown():
    from datetime import UTC, datetime

    offline = [ScoreIn("embedding", 0.9, 10), ScoreIn("activation", 0.7, 20)]
    patch = [ScoreIn("embedding", 0.6, 10), ScoreIn("activation", 0.95, 20)]
    stale = [ScoreIn("embedding", 0.5, 10), ScoreIn("activation_sd", 5.13, 20)]
    assert headline_score(offline) == pytest.approx(0.8)
    assert headline_score(patch) == pytest.approx(0.775)
    assert headline_score(stale) == 0.5  # the stale standard-deviation score counts nowhere
    assert headline_score([]) is None
    now = datetime.now(UTC)
    labels = [
        LabelView(1, 7, "fires on x", "auto", "offline", headline_score(offline), now),
        LabelView(
            2, 7, "the model continues it with y", "auto", "patchscope", headline_score(patch), now
        ),  # fmt: skip
        LabelView(3, 7, "older", "auto", "offline", headline_score(stale), now),
    ]
    assert pick_current_label(labels).id == 1  # best mean, though patchscope is newer
    labels[1] = LabelView(2, 7, "y", "auto", "patchscope", 0.85, now)
    assert pick_current_label(labels).id == 2
    human = LabelView(4, 7, "a person's", "human", "ann", None, now)
    assert pick_current_label([*labels, human]).id == 4  # a person still wins


# ---- own explanation vs the nearest neighbour's ------------------------------------------


def test_own_vs_neighbour_tells_right_from_a_neighbours_explanation():
    encoder = WordEncoder()
    pool = _pool(encoder)
    embed = EmbeddingCache(encoder)
    scorers = [EmbeddingScorer(embed), ActivationScorer(embed, n_retrieved=10), KeywordScorer()]
    names = ("embedding", "activation", "keyword")
    # Each feature's neighbour is the next topic; own explanations name their topic.
    cases = [(_feature(f), TOPICS[f], TOPICS[(f + 1) % 4], (f + 1) % 4) for f in range(4)]
    check = discriminate(cases, scorers, pool)
    assert check.auroc == dict.fromkeys(names, 1.0)
    assert check.paired == dict.fromkeys(names, 1.0) and check.best == 1.0
    assert check.n == dict.fromkeys(names, 4)
    # Swapped, the check fails: the neighbour's text wins everywhere.
    swapped = [(ev, theirs, own, n) for ev, own, theirs, n in cases]
    assert discriminate(swapped, scorers, pool).auroc == dict.fromkeys(names, 0.0)
    # The same text for both: nothing to tell apart, chance.
    same = [(ev, own, own, n) for ev, own, _, n in cases]
    assert discriminate(same, scorers, pool).auroc == dict.fromkeys(names, 0.5)
