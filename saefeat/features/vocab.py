"""Vocabulary projection: the tokens a feature's decoder row pushes up and down.

logits = (W_dec[f] * final-norm scale) @ W_U.T, the direct path from the feature to the
output; encoders use their tied word embedding. Computed in blocks of features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from saefeat.features.records import VocabProjection

_BLOCK = 1024


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Each token id decoded on its own, as a person reads it (' the', not 'Ġthe')."""
    return [tokenizer.decode([i]) for i in range(vocab_size)]


@torch.no_grad()
def vocab_projections(
    W_dec: torch.Tensor,
    W_U: torch.Tensor,
    norm_scale: torch.Tensor | None,
    strings: list[str],
    n: int = 10,
    on_logits: Callable[[int, torch.Tensor], None] | None = None,
) -> list[VocabProjection]:
    """`on_logits(start, logits)`, if given, sees each block's logits (features start..),
    so other per-feature reads of the logits share this pass (logit_histogram.py)."""
    device = W_dec.device
    W_U = W_U.to(device, torch.float32)
    out = []
    for start in range(0, W_dec.shape[0], _BLOCK):
        rows = W_dec[start : start + _BLOCK].float()
        if norm_scale is not None:
            rows = rows * norm_scale.to(device)
        logits = rows @ W_U.T
        if on_logits is not None:
            on_logits(start, logits)
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        for i in range(rows.shape[0]):
            t_ids, b_ids = top.indices[i].tolist(), bottom.indices[i].tolist()
            out.append(
                VocabProjection(
                    feature_index=start + i,
                    top_ids=t_ids,
                    top_strs=[strings[j] for j in t_ids],
                    top_values=top.values[i].tolist(),
                    bottom_ids=b_ids,
                    bottom_strs=[strings[j] for j in b_ids],
                    bottom_values=bottom.values[i].tolist(),
                )
            )
    return out
