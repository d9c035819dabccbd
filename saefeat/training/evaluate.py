"""SAE metrics as SAELens/SAEBench define them, over a stream of raw activations."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from saefeat.sae import SparseAutoencoder

DENSE_THRESHOLD = 0.1  # a latent firing on more than 10% of tokens counts as dense
DENSITY_BINS = np.concatenate([[0.0], np.logspace(-7, 0, 29)])  # log10 density histogram


@torch.no_grad()
def evaluate(
    sae: SparseAutoencoder, batches: Iterable[torch.Tensor], *, max_tokens: int | None = None
) -> dict:
    """MSE, FVU = sum((x - x_hat)^2) / sum((x - mean x)^2), L0, dead/dense fractions and
    the feature-density histogram, in the units the SAE takes as input."""
    device = sae.W_enc.device
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    n = 0
    sq_err = torch.zeros((), dtype=torch.float64, device=device)
    sum_x = torch.zeros(d_in, dtype=torch.float64, device=device)
    sum_x2 = torch.zeros((), dtype=torch.float64, device=device)
    l0 = torch.zeros((), dtype=torch.float64, device=device)
    fires = torch.zeros(d_sae, dtype=torch.float64, device=device)
    for x in batches:
        x = x.to(device, torch.float32)
        out = sae(x)
        sq_err += (out.x_hat.float() - x).pow(2).sum().double()
        sum_x += x.sum(0).double()
        sum_x2 += x.pow(2).sum().double()
        active = out.vals > 0
        l0 += active.sum().double()
        fires.index_add_(0, out.idx[active], torch.ones_like(out.vals[active], dtype=torch.float64))
        n += x.shape[0]
        if max_tokens and n >= max_tokens:
            break
    if n == 0:
        raise ValueError("no activations to evaluate on")
    total_var = sum_x2 - sum_x.pow(2).sum() / n
    density = (fires / n).cpu().numpy()
    hist, _ = np.histogram(density, bins=DENSITY_BINS)
    return {
        "n_tokens": n,
        "mse": float(sq_err / (n * d_in)),
        "fvu": float(sq_err / total_var),
        "explained_variance": float(1 - sq_err / total_var),
        "l0": float(l0 / n),
        "dead_frac": float((fires == 0).double().mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).mean()),
        "density_histogram": {"edges": DENSITY_BINS.tolist(), "counts": hist.tolist()},
    }
