"""Vocabulary projection: the tokens a feature's decoder row pushes up and down.

logits = (W_dec[f] * final-norm scale) @ W_U.T, the direct path from the feature to the
output; encoders use their tied word embedding. Computed in blocks of features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from saefeat.features.records import VocabProjection

_BLOCK = 1024


def token_strings(tokenizer, vocab_size: int) -> list[str]:
    """Each token id decoded on its own, as a person reads it (' the', not 'Ġthe')."""
    return [tokenizer.decode([i]) for i in range(vocab_size)]


@torch.no_grad()
def direct_logits(
    W_dec: torch.Tensor, W_U: torch.Tensor, norm_scale: torch.Tensor | None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, logits [block, vocab]) for each block of features start..: the decoder rows
    times the final-norm scale, through the unembedding, in float32 on W_dec's device."""
    device = W_dec.device
    W_U = W_U.to(device, torch.float32)
    scale = norm_scale.to(device, torch.float32) if norm_scale is not None else None
    for start in range(0, W_dec.shape[0], _BLOCK):
        rows = W_dec[start : start + _BLOCK].float()
        yield start, (rows * scale if scale is not None else rows) @ W_U.T


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
    out = []
    for start, logits in direct_logits(W_dec, W_U, norm_scale):
        if on_logits is not None:
            on_logits(start, logits)
        top = logits.topk(n, dim=1)
        bottom = logits.topk(n, dim=1, largest=False)
        for i in range(logits.shape[0]):
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
