"""Each feature's direct-path logits over the whole vocabulary, as a histogram (what
Neuronpedia draws beside its promoted and suppressed tokens).

logits = (W_dec[f] * final-norm scale) @ W_U.T, as in vocab.py, whose pass over the
features hands each block of logits here (`LogitHistograms.add`), so the matrix product
is paid once. The page needs only the shape, so indexing stores `LOGIT_BINS` counts
between the feature's smallest and largest logit (`features.histogram["logits"]`, ~300
bytes a feature) and the page draws it with no model and no weights: computing it per
view would need the unembedding (tens of MB) and a matrix product each time. The
tokens at the two ends are the stored projection's.
"""

from __future__ import annotations

import numpy as np
import torch

LOGIT_BINS = 40
_BLOCK = 1024


class LogitHistograms:
    """Collects per-feature histograms from blocks of logits [features, vocab]."""

    def __init__(self, d_sae: int, bins: int = LOGIT_BINS):
        self.bins = bins
        self.counts = np.zeros((d_sae, bins), np.int64)
        self.ranges = np.zeros((d_sae, 2), np.float64)

    @torch.no_grad()
    def add(self, start: int, logits: torch.Tensor) -> None:
        """The logits of features start.. start + len(logits); `logits` is not changed."""
        n, bins = logits.shape[0], self.bins
        lo, hi = torch.aminmax(logits, dim=1)
        scale = bins / (hi - lo).clamp_min(torch.finfo(torch.float32).tiny)
        # One temporary, int32 bins, one bincount: 2-3x cheaper than index_add on longs.
        b = torch.sub(logits, lo[:, None]).mul_(scale[:, None]).to(torch.int32)
        b.clamp_(min=0, max=bins - 1)
        b += (torch.arange(n, dtype=torch.int32, device=b.device) * bins)[:, None]
        counts = torch.bincount(b.view(-1), minlength=n * bins)
        self.counts[start : start + n] = counts.view(n, bins).cpu().numpy()
        self.ranges[start : start + n] = torch.stack([lo, hi], 1).double().cpu().numpy()


@torch.no_grad()
def logit_histograms(
    W_dec: torch.Tensor, W_U: torch.Tensor, norm_scale: torch.Tensor | None,
    bins: int = LOGIT_BINS,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(counts [d_sae, bins] int64, range [d_sae, 2]: each feature's min and max logit);
    bins are equal-width slices of that range. On its own pass (indexing shares
    vocab_projections' pass instead)."""
    out = LogitHistograms(W_dec.shape[0], bins)
    W_U = W_U.to(W_dec.device, torch.float32)
    for start in range(0, W_dec.shape[0], _BLOCK):
        rows = W_dec[start : start + _BLOCK].float()
        if norm_scale is not None:
            rows = rows * norm_scale.to(rows.device)
        out.add(start, rows @ W_U.T)
    return out.counts, out.ranges
