"""Classification metrics the scorers report (numpy only)."""

from __future__ import annotations

import numpy as np


def auroc(positives, negatives) -> float:
    """P(a random positive scores above a random negative), ties counting half
    (the Mann-Whitney U statistic / (n_pos * n_neg))."""
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def balanced_accuracy(truth: list[bool], predicted: list[bool]) -> float:
    """Mean of the true-positive and true-negative rates (chance = 0.5 whatever the mix)."""
    t = np.asarray(truth, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    rates = [float((p[t == c] == c).mean()) for c in (True, False) if (t == c).any()]
    return float(np.mean(rates))
