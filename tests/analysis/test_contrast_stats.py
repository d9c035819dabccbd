"""Contrast statistics on synthetic sparse data: known differences found, FDR held,
document length unable to fake a difference; the vectorised Fisher test is scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from synthetic_sides import simulate_side

from saefeat.analysis.contrast_classifier import classify
from saefeat.analysis.contrast_stats import (
    benjamini_hochberg,
    contrast_statistics,
    fisher_exact_two_sided,
    window_test,
)

D = 120


def _rates(base: float = 0.01, **bumps: float) -> np.ndarray:
    r = np.full(D, base)
    for key, value in bumps.items():
        lo, hi = (int(x) for x in key.removeprefix("f").split("_"))
        r[lo:hi] = value
    return r


def test_known_differing_features_are_found_on_their_side():
    rng = np.random.default_rng(0)
    a = simulate_side(rng, 300, 64, _rates(f0_5=0.06))
    b = simulate_side(rng, 300, 64, _rates(f5_10=0.06))
    st = contrast_statistics(a, b)
    assert set(st.ranked("a", 0.05, D)) == set(range(5))
    assert set(st.ranked("b", 0.05, D)) == set(range(5, 10))
    assert (st.log_ratio[:5] > 1).all() and (st.log_ratio[5:10] < -1).all()
    assert (st.mean_act_diff[:5] > 0).all() and (st.mean_act_diff[5:10] < 0).all()
    assert st.n_tokens_a == 300 * 64 and st.n_window_docs_b == 300
    # The top contrastive features are the planted ones.
    assert set(st.most_contrastive(10)) == set(range(10))


def test_no_difference_means_no_discoveries_in_most_runs():
    """Under the complete null, BH keeps P(any discovery) <= alpha."""
    any_found = 0
    for seed in range(10):
        rng = np.random.default_rng(seed)
        st = contrast_statistics(simulate_side(rng, 100, 48, _rates(0.03)),
                                 simulate_side(rng, 100, 48, _rates(0.03)))  # fmt: skip
        any_found += bool((st.q < 0.05).any())
    assert any_found <= 2


def test_longer_documents_do_not_fake_a_difference():
    """B's documents are 6x longer at the same per-token rates: firing anywhere in a
    document differs hugely, the fixed-length window does not."""
    rng = np.random.default_rng(1)
    rates = _rates(0.02)
    a = simulate_side(rng, 300, 40, rates, window=32)
    b = simulate_side(rng, 300, 240, rates, window=32)
    st = contrast_statistics(a, b)
    assert (st.doc_rate_b - st.doc_rate_a > 0.3).all()  # the confound is there ...
    naive_p = window_test(st.doc_rate_a * 300, 300, st.doc_rate_b * 300, 300)[1]
    assert (benjamini_hochberg(naive_p) < 0.05).all()  # ... and fools a naive test
    assert not (st.q < 0.05).any()  # but not the window test
    assert np.abs(st.log_ratio).max() < 0.5


def test_documents_shorter_than_the_window_stay_out_of_the_test():
    rng = np.random.default_rng(2)
    a = simulate_side(rng, 50, 16, _rates(0.5), window=32)  # all too short
    b = simulate_side(rng, 50, 64, _rates(0.01), window=32)
    st = contrast_statistics(a, b)
    assert st.n_window_docs_a == 0 and (st.p == 1).all()


def test_benjamini_hochberg_matches_the_step_up_rule():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.5])
    # sorted: .005 .01 .03 .04 .5 -> scaled x5/rank: .025 .025 .05 .05 .5
    assert np.allclose(benjamini_hochberg(p), [0.025, 0.05, 0.05, 0.025, 0.5])
    uniform = np.random.default_rng(3).random((400, 500))
    any_rejected = np.mean([(benjamini_hochberg(row) < 0.05).any() for row in uniform])
    assert any_rejected <= 0.09


def test_fisher_matches_scipy_and_is_used_for_rare_features():
    rng = np.random.default_rng(4)
    n1, n2 = 37, 61
    x1 = rng.integers(0, 6, 200)
    x2 = rng.integers(0, 6, 200)
    x1[:20], x2[:20] = n1 - x1[:20], n2 - x2[:20]  # rare silence: the flipped margin
    ours = fisher_exact_two_sided(x1, n1, x2, n2)
    want = [
        stats.fisher_exact([[a, n1 - a], [b, n2 - b]]).pvalue for a, b in zip(x1, x2, strict=True)
    ]
    assert ours == pytest.approx(want, rel=1e-6, abs=1e-12)
    _, _, used = window_test(np.array([1, 30]), 100, np.array([2, 50]), 100)
    assert used.tolist() == [True, False]


@pytest.mark.parametrize(("n1", "n2"), [(6, 5000), (5000, 6)])
def test_fisher_against_a_large_corpus_enumerates_only_the_small_side(n1, n2, monkeypatch):
    rng = np.random.default_rng(8)  # a few documents vs many: every margin is large
    small, large = min(n1, n2), max(n1, n2)
    xs, xl = rng.integers(0, small + 1, 50), rng.integers(0, large // 2, 50)
    x1, x2 = (xs, xl) if n1 < n2 else (xl, xs)
    widths = []
    logpmf = stats.hypergeom.logpmf

    def recorded(k, *args):
        if np.ndim(k) == 2:  # the grid of counts, [1, columns]
            widths.append(np.shape(k)[1])
        return logpmf(k, *args)

    monkeypatch.setattr(stats.hypergeom, "logpmf", recorded)
    ours = fisher_exact_two_sided(x1, n1, x2, n2)
    assert max(widths) <= small + 1  # was the margin: ~ large / 2 columns per feature
    monkeypatch.setattr(stats.hypergeom, "logpmf", logpmf)
    want = [
        stats.fisher_exact([[a, n1 - a], [b, n2 - b]]).pvalue for a, b in zip(x1, x2, strict=True)
    ]
    assert ours == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_classifier_separates_planted_features_and_reports_auroc():
    rng = np.random.default_rng(5)
    a = simulate_side(rng, 120, 64, _rates(f0_8=0.05))
    b = simulate_side(rng, 120, 64, _rates(f8_16=0.05))
    clf = classify(a, b, n_features=16, seed=0)
    assert clf.auroc is not None and clf.auroc > 0.9
    assert clf.n_test == 72 and len(clf.features) == 16
    assert classify(a.take(np.arange(2)), b, n_features=4).auroc is None


@pytest.mark.parametrize("test_fraction", [0.001, 0.999])
def test_classifier_holds_out_a_document_of_each_side_at_any_fraction(test_fraction):
    rng = np.random.default_rng(6)  # sklearn refused a held-out part of one document
    a = simulate_side(rng, 40, 64, _rates(f0_8=0.05))
    b = simulate_side(rng, 40, 64, _rates(f8_16=0.05))
    clf = classify(a, b, n_features=8, test_fraction=test_fraction, seed=0)
    assert clf.auroc is not None and 2 <= clf.n_test <= 78


def test_classifier_without_a_held_out_document_of_the_small_side_reports_none():
    rng = np.random.default_rng(7)  # 4 vs 400: a 1% split holds out no A document
    a = simulate_side(rng, 4, 64, _rates(f0_8=0.05))
    b = simulate_side(rng, 400, 64, _rates())
    assert classify(a, b, n_features=8, test_fraction=0.01, seed=0).auroc is None
