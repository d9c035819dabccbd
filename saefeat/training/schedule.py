"""Learning rate: sparsify's width-scaled default and a warm-up / flat / decay schedule."""

from __future__ import annotations

import math


def default_lr(d_sae: int) -> float:
    """sparsify's Adam learning rate, scaled by width."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def lr_factor(step: int, total: int, warmup_frac: float = 0.05, decay_frac: float = 0.2) -> float:
    """Linear warm-up, flat, then linear decay to zero over the last `decay_frac`.

    A pure function of the step, so a resumed run needs only the step to be exact."""
    warm = max(1, int(total * warmup_frac)) if warmup_frac > 0 else 0
    decay_start = int(total * (1 - decay_frac))
    if step < warm:
        return (step + 1) / warm
    if decay_frac > 0 and step >= decay_start:
        return max(0.0, (total - step) / max(1, total - decay_start))
    return 1.0
