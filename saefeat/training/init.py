"""Initial SAE weights from the data: b_dec at the geometric median (OpenAI's pre_bias)."""

from __future__ import annotations

import torch


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 8, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's iteration from the mean: the point minimising the summed distances,
    a centre that the heavy-norm outliers of residual streams do not drag."""
    x = x.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(eps)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() <= 1e-6 * y.norm().clamp_min(1e-12):
            y = y_next
            break
        y = y_next
    return y.float()
