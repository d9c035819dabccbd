"""How well the top contrastive features alone tell corpus A from corpus B.

As the artificial-text-detection paper does: logistic regression on document-level
features (each document's per-token firing rate of the chosen features, which does not
grow with the document's length), held-out split by document. The features are chosen
on the training documents only, so the held-out AUROC is not inflated by selection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from saefeat.analysis.contrast_stats import SideCounts, contrast_statistics


@dataclass
class ClassifierResult:
    auroc: float | None  # None: too few documents on a side to hold some out
    features: list[int]  # chosen on the training documents
    n_train: int
    n_test: int


def document_rates(side: SideCounts, features: np.ndarray) -> np.ndarray:
    """[documents, len(features)]: firing tokens / counted tokens."""
    counts = side.fire_count[:, features].toarray().astype(np.float64)
    return counts / np.maximum(side.tokens, 1)[:, None]


def classify(
    a: SideCounts, b: SideCounts, *, n_features: int, test_fraction: float = 0.3, seed: int = 0
) -> ClassifierResult:
    a = a.take(np.flatnonzero(a.tokens > 0))
    b = b.take(np.flatnonzero(b.tokens > 0))
    if min(a.n_docs, b.n_docs) < 4:
        return ClassifierResult(None, [], a.n_docs + b.n_docs, 0)
    labels = np.r_[np.ones(a.n_docs), np.zeros(b.n_docs)]
    which = np.r_[np.arange(a.n_docs), np.arange(b.n_docs)]
    # sklearn's own count (ceil), kept to 2..n-2: a stratified split needs a document of
    # each side in both parts, else it refuses.
    n_test = min(max(math.ceil(test_fraction * labels.size), 2), labels.size - 2)
    train, test = train_test_split(
        np.arange(labels.size), test_size=n_test, stratify=labels, random_state=seed
    )
    if len(set(labels[test])) < 2 or len(set(labels[train])) < 2:  # one side very small
        return ClassifierResult(None, [], len(train), len(test))
    train_a, train_b = which[train[labels[train] == 1]], which[train[labels[train] == 0]]
    chosen = contrast_statistics(a.take(train_a), b.take(train_b)).most_contrastive(n_features)
    x = np.vstack([document_rates(a, chosen), document_rates(b, chosen)])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x[train], labels[train])
    auroc = float(roc_auc_score(labels[test], model.predict_proba(x[test])[:, 1]))
    return ClassifierResult(auroc, [int(f) for f in chosen], len(train), len(test))
