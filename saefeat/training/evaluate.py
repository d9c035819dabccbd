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
    sae: SparseAutoencoder,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
    *,
    max_tokens: int | None = None,
    with_density: bool = False,
    source_widths: list[int] | None = None,
) -> dict:
    """MSE, FVU = sum((x - x_hat)^2) / sum((x - mean x)^2), L0, L1, dead/dense fractions,
    the feature-density histogram, cosine similarity and shrinkage (SAEBench's l2 ratio and
    relative reconstruction bias), in the units the SAE takes as input. A transcoder's
    batches are (input, target) pairs and every figure is of its prediction of the target.
    `with_density` adds each latent's firing frequency as a numpy array under "density";
    `source_widths` (a crosscoder's) adds the FVU of each source's slice, "fvu_by_source"."""
    device = sae.W_enc.device
    d_out, d_sae = sae.cfg.out_dim, sae.cfg.d_sae
    n = 0
    z = {k: torch.zeros((), dtype=torch.float64, device=device)
         for k in ("sq_err", "sum_x2", "l0", "l1", "norm_in", "norm_out", "ratio", "cos",
                   "dot", "out2")}  # fmt: skip
    sum_x = torch.zeros(d_out, dtype=torch.float64, device=device)
    fires = torch.zeros(d_sae, dtype=torch.float64, device=device)
    sq_err_dims = torch.zeros(d_out, dtype=torch.float64, device=device)  # per dimension
    sum_x2_dims = torch.zeros(d_out, dtype=torch.float64, device=device)
    for batch in batches:
        inputs, x = batch if isinstance(batch, tuple) else (batch, batch)
        x = x.to(device, torch.float32)  # the target: an SAE's own input
        out = sae(inputs.to(device, torch.float32))
        x_hat = out.x_hat.float()
        err2 = (x_hat - x).pow(2).sum(0).double()
        sq_err_dims += err2
        sum_x2_dims += x.pow(2).sum(0).double()
        z["sq_err"] += err2.sum()
        sum_x += x.sum(0).double()
        z["sum_x2"] += x.pow(2).sum().double()
        n_in, n_out = x.norm(dim=1), x_hat.norm(dim=1)
        z["norm_in"] += n_in.sum().double()
        z["norm_out"] += n_out.sum().double()
        z["ratio"] += (n_out / n_in.clamp_min(1e-12)).sum().double()
        z["cos"] += torch.nn.functional.cosine_similarity(x, x_hat, dim=1).sum().double()
        z["dot"] += (x * x_hat).sum().double()
        z["out2"] += x_hat.pow(2).sum().double()
        active = out.vals > 0
        z["l0"] += active.sum().double()
        z["l1"] += out.vals.float().clamp_min(0).sum().double()
        fires.index_add_(0, out.idx[active], torch.ones_like(out.vals[active], dtype=torch.float64))
        n += x.shape[0]
        if max_tokens and n >= max_tokens:
            break
    if n == 0:
        raise ValueError("no activations to evaluate on")
    total_var = z["sum_x2"] - sum_x.pow(2).sum() / n
    density = (fires / n).cpu().numpy()
    hist, _ = np.histogram(density, bins=DENSITY_BINS)
    out = {
        "n_tokens": n,
        "mse": float(z["sq_err"] / (n * d_out)),
        "fvu": float(z["sq_err"] / total_var),
        "explained_variance": float(1 - z["sq_err"] / total_var),
        "cossim": float(z["cos"] / n),
        "l0": float(z["l0"] / n),
        "l1": float(z["l1"] / n),
        "l2_norm_in": float(z["norm_in"] / n),
        "l2_norm_out": float(z["norm_out"] / n),
        "l2_ratio": float(z["ratio"] / n),
        "relative_reconstruction_bias": float(z["out2"] / z["dot"]) if z["dot"] else 0.0,
        "dead_frac": float((fires == 0).double().mean()),
        "dense_frac": float((density > DENSE_THRESHOLD).mean()),
        "density_histogram": {"edges": DENSITY_BINS.tolist(), "counts": hist.tolist()},
    }
    if source_widths:
        var_dims = sum_x2_dims - sum_x.pow(2) / n
        bounds = np.cumsum([0, *source_widths])
        out["fvu_by_source"] = [float(sq_err_dims[a:b].sum() / var_dims[a:b].sum())
                                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]  # fmt: skip
    if with_density:
        out["density"] = density
    return out
