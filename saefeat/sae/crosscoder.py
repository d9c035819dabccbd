"""Crosscoders (Lindsey et al. 2024): one dictionary over several sources at once.

A source is a hook of an activation set: the same hook in two models' sets on identical
tokens (model diffing), or several hooks of one set (layers of one model). The crosscoder
is an SAE over the sources' activations concatenated (cfg `sources`, in order): one
encoder over the concatenation, and each source's decoder the columns of W_dec that
source's slice spans, so every architecture is a crosscoder (BatchTopK by default: it
avoids false one-model latents, Minder et al. 2025). What a latent is follows from its
per-source decoder norms: with two sources, the relative norm ||d_B|| / (||d_A|| +
||d_B||) is 0 for a latent only A uses, 1 for one only B uses, 0.5 for one both use
alike; `sharing` cuts it at `EXCLUSIVE_BELOW` / 1 - `EXCLUSIVE_BELOW` (Lindsey et al.'s
"exclusive" latents sit at the ends of that histogram).

Norms are compared in the units the crosscoder trained in: each source scaled to unit
mean squared norm (cfg `sources[i]["scale"]`). The saved W_dec acts on raw activations
(each slice divided by its scale), so raw norms would lean every latent towards the
source with the larger activations (a deeper layer, a louder model): `in_training_units`
undoes that first.
"""

from __future__ import annotations

import torch

# relative norm < 0.1: A-only; > 0.9: B-only; between: shared.
EXCLUSIVE_BELOW = 0.1
SHARING = ("a_only", "shared", "b_only")  # the catalog's copy is checked against this


def source_scales(cfg) -> list[float] | None:
    """Each source's training scale, as cfg.sources records it (None: not recorded)."""
    scales = [s.get("scale") for s in cfg.sources or []]
    return None if not scales or None in scales else [float(s) for s in scales]


def source_slices(widths: list[int]) -> list[slice]:
    """Each source's columns of the concatenation."""
    out, start = [], 0
    for w in widths:
        out.append(slice(start, start + w))
        start += w
    return out


def in_training_units(W_dec: torch.Tensor, widths: list[int],
                      scales: list[float] | None) -> torch.Tensor:  # fmt: skip
    """W_dec with each source's slice times that source's scale (None: as it is)."""
    if not scales:
        return W_dec
    per_dim = torch.cat([torch.full((w,), float(s), dtype=W_dec.dtype, device=W_dec.device)
                         for w, s in zip(widths, scales, strict=True)])  # fmt: skip
    return W_dec * per_dim


def decoder_norms(W_dec: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """[d_sae, n_sources]: the norm of each latent's decoder row within each source."""
    return torch.stack([W_dec[:, s].float().norm(dim=1) for s in source_slices(widths)], 1)


def relative_norm(norms: torch.Tensor) -> torch.Tensor | None:
    """[d_sae] ||d_B|| / (||d_A|| + ||d_B||) for two sources; None for more."""
    if norms.shape[1] != 2:
        return None
    return norms[:, 1] / norms.sum(1).clamp_min(1e-12)


def sharing(rel: float) -> str:
    """A latent's class by its relative norm (the threshold is EXCLUSIVE_BELOW)."""
    if rel < EXCLUSIVE_BELOW:
        return "a_only"
    if rel > 1 - EXCLUSIVE_BELOW:
        return "b_only"
    return "shared"


def dominant_rows(W_dec: torch.Tensor, widths: list[int],
                  scales: list[float] | None = None) -> torch.Tensor:  # fmt: skip
    """[d_sae, width] each latent's (raw) decoder row within the source it writes most to
    in training units (the direction a vocabulary projection reads: a B-only latent's A
    part is ~0). The sources must be of one width (one model's layers, or two models)."""
    if len(set(widths)) != 1:
        raise ValueError(f"sources of different widths {widths} have no common row")
    parts = torch.stack([W_dec[:, s] for s in source_slices(widths)], 1)  # [d_sae, n, w]
    best = decoder_norms(in_training_units(W_dec, widths, scales), widths).argmax(1)
    return parts[torch.arange(W_dec.shape[0]), best]
