"""AuxK loss (Gao et al. 2024; sparsify): dead latents learn to reconstruct the residual.

auxk_loss(x, residual, W_enc, b_enc, W_dec, dead_mask, k_aux, *, variance=None)
  x         encoder input [B, d_in], exactly what topk_encode got (after any b_dec shift)
  residual  target - reconstruction [B, d_in]; detached here
  dead_mask bool [d_sae]
  k_aux     latents per row, clamped to the number of dead latents
  variance  normaliser; default sum((residual - residual.mean(0))**2). Pass
            sum((target - target.mean(0))**2) for sparsify's exact definition.
Returns scale * sum((e_hat - residual)**2) / variance, scale = min(n_dead / k_aux, 1),
where e_hat = sparse_decode of the top-k_aux relu'd pre-activations among dead latents
(no decoder bias). Zero when nothing is dead. Gradients reach W_enc, b_enc and W_dec
(as in OpenAI's sparse_autoencoder).

Only the dead latents' columns are encoded (W_enc[:, dead]), so the pre-activations are
[B, n_dead], never [B, d_sae] unless every latent is dead; it reuses topk_encode and
sparse_decode, so it runs on the same kernels. Finding the dead ids costs a host sync.
"""

from __future__ import annotations

import torch

from .decode import sparse_decode
from .encode import topk_encode


def auxk_loss(
    x: torch.Tensor,
    residual: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    dead_mask: torch.Tensor,
    k_aux: int,
    *,
    variance: torch.Tensor | float | None = None,
) -> torch.Tensor:
    if dead_mask.dtype != torch.bool or dead_mask.shape != b_enc.shape:
        raise ValueError(
            f"dead_mask must be bool [d_sae]={tuple(b_enc.shape)}, got "
            f"{dead_mask.dtype} {tuple(dead_mask.shape)}"
        )
    if not isinstance(k_aux, int) or k_aux < 1:
        raise ValueError(f"k_aux must be a positive int, got {k_aux!r}")
    dead = dead_mask.nonzero().squeeze(1)
    n_dead = dead.numel()
    if n_dead == 0:
        return residual.new_zeros((), dtype=torch.float32)
    scale = min(n_dead / k_aux, 1.0)
    k = min(k_aux, n_dead)
    # Gather the dead columns as contiguous latent rows, so no transpose copy follows.
    w_dead = W_enc.t()[dead].t()
    vals, sub = topk_encode(x, w_dead, b_enc[dead], k)
    e_hat = sparse_decode(dead[sub], vals, W_dec, None)
    target = residual.detach().float()
    if variance is None:
        variance = (target - target.mean(0)).pow(2).sum()
    return scale * (e_hat.float() - target).pow(2).sum() / variance
