"""Per-feature statistics of two corpora under one SAE: which features tell A from B.

Input per side is a `SideCounts`: for each document (see contrast_docs.py for what a
document is) its counted tokens, and sparse [documents, d_sae] tables of firing counts,
activation sums and "fires in the document's first `window` counted tokens".

Length control: a feature that fires anywhere in a document fires more often in long
documents, so "document firing" is measured on a fixed-length window, each document's
first `window` counted tokens; shorter documents stay out of the test. Every tested
document then offers the feature the same number of tokens, and documents stay
independent units (one window each). Per-token rates and mean activations are reported
beside it but not tested (tokens of one document are not independent).

Test: two-proportion z-test on window firing, Fisher's exact test where an expected cell
count is under `fisher_below`; Benjamini-Hochberg q-values over all d_sae features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy import stats

SMOOTHING = 0.5  # add-half (Jeffreys) counts in the log-ratio: a rate of 0 stays finite
FISHER_BELOW = 5.0  # expected cell count under which the z-test's normal approximation fails


@dataclass
class SideCounts:
    """One corpus under one SAE, by document."""

    tokens: np.ndarray  # int64 [U]: counted tokens per document
    fire_count: sp.csr_matrix  # [U, d_sae]: tokens where the feature fires
    act_sum: sp.csr_matrix  # [U, d_sae]: sum of its activations
    window_fire: sp.csr_matrix  # [U, d_sae] 0/1: fires in the first `window` counted tokens
    window: int

    @property
    def n_docs(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def full(self) -> np.ndarray:
        """Documents long enough for the fixed-length window test."""
        return self.tokens >= self.window

    def take(self, rows: np.ndarray) -> SideCounts:
        return SideCounts(
            self.tokens[rows],
            self.fire_count[rows],
            self.act_sum[rows],
            self.window_fire[rows],
            self.window,
        )


@dataclass
class FeatureStats:
    """Arrays over features [d_sae]; `_a`/`_b` are the two corpora."""

    token_rate_a: np.ndarray  # firing tokens / counted tokens
    token_rate_b: np.ndarray
    doc_rate_a: np.ndarray  # documents where it fires anywhere (length-confounded; shown)
    doc_rate_b: np.ndarray
    window_rate_a: np.ndarray  # full-window documents where it fires in the window (tested)
    window_rate_b: np.ndarray
    mean_act_a: np.ndarray  # mean activation over counted tokens (0 where it is silent)
    mean_act_b: np.ndarray
    mean_act_diff: np.ndarray  # a - b
    log_ratio: np.ndarray  # log2 of the smoothed token firing rates, a over b
    z: np.ndarray  # z of window firing, a - b (0 where Fisher's test was used)
    p: np.ndarray
    q: np.ndarray  # Benjamini-Hochberg
    fisher: np.ndarray  # bool: Fisher's exact test gave p
    n_tokens_a: int
    n_tokens_b: int
    n_docs_a: int
    n_docs_b: int
    n_window_docs_a: int
    n_window_docs_b: int

    @property
    def d_sae(self) -> int:
        return int(self.p.shape[0])

    def ranked(self, side: str, alpha: float, limit: int) -> np.ndarray:
        """Features significant at q < alpha that fire more in `side` ("a" or "b"),
        strongest log-ratio first."""
        sign = 1.0 if side == "a" else -1.0
        more = sign * (self.window_rate_a - self.window_rate_b) > 0
        picked = np.flatnonzero((self.q < alpha) & more)
        order = np.lexsort((picked, -sign * self.log_ratio[picked]))
        return picked[order][:limit]

    def most_contrastive(self, n: int) -> np.ndarray:
        """The n features that best separate the sides: smallest p, then largest
        |log-ratio| (many p values underflow to 0 on large corpora)."""
        order = np.lexsort((np.arange(self.d_sae), -np.abs(self.log_ratio), self.p))
        return order[:n]


def _column_sums(m: sp.csr_matrix) -> np.ndarray:
    return np.asarray(m.sum(axis=0)).ravel().astype(np.float64)


def _docs_firing(m: sp.csr_matrix) -> np.ndarray:
    return np.bincount(m.indices[m.data > 0], minlength=m.shape[1]).astype(np.float64)


def contrast_statistics(
    a: SideCounts, b: SideCounts, *, fisher_below: float = FISHER_BELOW
) -> FeatureStats:
    d = a.fire_count.shape[1]
    if b.fire_count.shape[1] != d:
        raise ValueError(f"sides have {d} and {b.fire_count.shape[1]} features")
    n_tok_a, n_tok_b = float(a.tokens.sum()), float(b.tokens.sum())
    k_a, k_b = _column_sums(a.fire_count), _column_sums(b.fire_count)
    full_a, full_b = a.full, b.full
    n1, n2 = int(full_a.sum()), int(full_b.sum())
    w_a = _docs_firing(a.window_fire[full_a])
    w_b = _docs_firing(b.window_fire[full_b])
    z, p, fisher = window_test(w_a, n1, w_b, n2, fisher_below=fisher_below)
    mean_a = _column_sums(a.act_sum) / max(n_tok_a, 1.0)
    mean_b = _column_sums(b.act_sum) / max(n_tok_b, 1.0)
    rate = lambda k, n: (k + SMOOTHING) / (n + 2 * SMOOTHING)  # noqa: E731
    return FeatureStats(
        token_rate_a=k_a / max(n_tok_a, 1.0),
        token_rate_b=k_b / max(n_tok_b, 1.0),
        doc_rate_a=_docs_firing(a.fire_count) / max(a.n_docs, 1),
        doc_rate_b=_docs_firing(b.fire_count) / max(b.n_docs, 1),
        window_rate_a=w_a / max(n1, 1),
        window_rate_b=w_b / max(n2, 1),
        mean_act_a=mean_a,
        mean_act_b=mean_b,
        mean_act_diff=mean_a - mean_b,
        log_ratio=np.log2(rate(k_a, n_tok_a) / rate(k_b, n_tok_b)),
        z=z,
        p=p,
        q=benjamini_hochberg(p),
        fisher=fisher,
        n_tokens_a=int(n_tok_a),
        n_tokens_b=int(n_tok_b),
        n_docs_a=a.n_docs,
        n_docs_b=b.n_docs,
        n_window_docs_a=n1,
        n_window_docs_b=n2,
    )


def window_test(
    x1: np.ndarray, n1: int, x2: np.ndarray, n2: int, *, fisher_below: float = FISHER_BELOW
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, two-sided p, used-Fisher) per feature for x1/n1 vs x2/n2 firing documents."""
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    d = x1.shape[0]
    if n1 == 0 or n2 == 0:  # nothing to compare on one side
        return np.zeros(d), np.ones(d), np.zeros(d, bool)
    n = n1 + n2
    k = x1 + x2
    pooled = k / n
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (x1 / n1 - x2 / n2) / se, 0.0)
    p = np.where(se > 0, 2 * stats.norm.sf(np.abs(z)), 1.0)
    expected_min = np.minimum(k, n - k) * min(n1, n2) / n
    fisher = (expected_min < fisher_below) & (k > 0) & (k < n)
    if fisher.any():
        p[fisher] = fisher_exact_two_sided(x1[fisher], n1, x2[fisher], n2)
        z[fisher] = 0.0
    return z, p, fisher


def fisher_exact_two_sided(x1: np.ndarray, n1: int, x2: np.ndarray, n2: int) -> np.ndarray:
    """scipy.stats.fisher_exact's two-sided p for many 2x2 tables [[x1, n1-x1], [x2, n2-x2]]
    at once: the sum of the hypergeometric probabilities no larger than the observed one.

    Only for tables with few firing (or few silent) documents, or a small side: the
    count enumerated is the smaller side's firing (or silent) documents, so the grid is
    [features, at most min(n1, n2, that margin) + 1] (a few documents against a large
    corpus make every feature a Fisher case with margins up to half the corpus).
    """
    x1, x2 = np.asarray(x1, np.int64), np.asarray(x2, np.int64)
    if n2 < n1:  # the two-sided p is the same with the rows swapped
        x1, n1, x2, n2 = x2, n2, x1, n1
    k = x1 + x2
    n = n1 + n2
    flip = k > n - k  # silent documents are the rare outcome: count those instead
    k = np.where(flip, n - k, k)
    obs = np.where(flip, n1 - x1, x1)
    grid = np.arange(min(int(k.max()), n1) + 1)[None, :]  # the support ends at min(k, n1)
    logpmf = stats.hypergeom.logpmf(grid, n, k[:, None], n1)  # -inf off the support
    observed = stats.hypergeom.logpmf(obs, n, k, n1)[:, None]
    # scipy's relative tolerance for "as extreme": probabilities within 1e-7 of it count.
    keep = logpmf <= observed + np.log1p(1e-7)
    p = np.where(keep, np.exp(logpmf), 0.0).sum(axis=1)
    return np.minimum(p, 1.0)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """q-values: the smallest FDR at which each hypothesis is rejected (BH step-up)."""
    p = np.asarray(p, np.float64)
    m = p.shape[0]
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q
