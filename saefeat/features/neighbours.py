"""Each feature's nearest features by cosine similarity of their decoder rows.

Computed in blocks of rows on the weights' device: a block's [block, d_sae] similarity
matrix is the only large temporary, so a million-feature SAE never needs d_sae^2 memory.
"""

from __future__ import annotations

import torch

_BLOCK = 2048


@torch.no_grad()
def decoder_neighbours(
    W_dec: torch.Tensor, n: int = 10, block: int = _BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """([d_sae, n] neighbour indices, [d_sae, n] cosines), nearest first, self excluded.

    Rows with zero norm (dead decoder rows) get cosine 0 with everything. With fewer than
    n + 1 features the missing places are index -1."""
    d_sae = W_dec.shape[0]
    unit = W_dec.float()
    unit = unit / unit.norm(dim=1, keepdim=True).clamp_min(1e-12)
    m = min(n, d_sae - 1)
    indices = torch.full((d_sae, n), -1, dtype=torch.long, device=W_dec.device)
    cosines = torch.zeros(d_sae, n, device=W_dec.device)
    if m <= 0:
        return indices.cpu(), cosines.cpu()
    for start in range(0, d_sae, block):
        rows = unit[start : start + block]
        sims = rows @ unit.T  # [block, d_sae]
        own = torch.arange(start, start + rows.shape[0], device=W_dec.device)
        sims[torch.arange(rows.shape[0], device=W_dec.device), own] = -float("inf")
        top = sims.topk(m, dim=1)
        indices[start : start + rows.shape[0], :m] = top.indices
        cosines[start : start + rows.shape[0], :m] = top.values
    return indices.cpu(), cosines.cpu()
