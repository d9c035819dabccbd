"""The held-out slice of an activation set: whole contexts that training never reads.

The slice depends only on the set's size and the fraction (a fixed seed), so every SAE
trained on a set with the same fraction is evaluated on the same contexts. With an
evaluation set (`eval_set`) training reads every context and evaluation reads the other
set, which must come from the same model and hook with the same width.
"""

from __future__ import annotations

import math

import numpy as np

from saefeat.errors import SpecError
from saefeat.storage.activations import ActivationSet

SPLIT_SEED = 1234


def heldout_contexts(n_contexts: int, frac: float) -> np.ndarray:
    """bool [n_contexts]: True for the held-out contexts (at least one)."""
    n = max(1, math.ceil(frac * n_contexts))
    if n >= n_contexts:
        raise SpecError(
            f"a held-out fraction of {frac:g} leaves no context of the set's {n_contexts} "
            "to train on; harvest more or name an --eval-set",
            field="heldout_frac",
        )
    mask = np.zeros(n_contexts, dtype=bool)
    mask[np.random.default_rng(SPLIT_SEED).permutation(n_contexts)[:n]] = True
    return mask


def check_eval_set(train: ActivationSet, other: ActivationSet, hook: str) -> None:
    """The evaluation set must hold the same kind of activations as the training set."""
    for what, a, b in (("model", train.model_name, other.model_name),
                       ("model revision", train.revision, other.revision),
                       ("width (d_model)", train.d_model, other.d_model)):  # fmt: skip
        if a != b:
            raise SpecError(f"{other.id} has {what} {b!r}, the training set {a!r}",
                            field="eval_set")  # fmt: skip
    if hook not in other.hooks:
        raise SpecError(f"{other.id} has no hook {hook!r} (it has {other.hooks})",
                        field="eval_set")  # fmt: skip
