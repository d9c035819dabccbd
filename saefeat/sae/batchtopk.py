"""BatchTopK SAE (Bussmann et al. 2024): the batch's B*k largest latents during training.

At inference a latent fires when its relu'd pre-activation exceeds one global threshold,
the EMA of the smallest activation BatchTopK kept in each training batch (as
dictionary_learning and SAELens do); so a trained BatchTopK SAE is a JumpReLU SAE, and
the `threshold` [d_sae] buffer is stored in the checkpoint (SAELens exports it as one).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from saefeat.sae.base import (
    ActiveCount,
    ArchConfig,
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    dense_to_sparse,
    register,
)


class BatchTopKConfig(ArchConfig):
    name: Literal["batchtopk"] = "batchtopk"
    k: ActiveCount = 32  # on average over the batch
    threshold_ema: float = Field(
        0.01, gt=0, le=1, description="EMA rate of the inference threshold"
    )


@register(BatchTopKConfig)
class BatchTopKSAE(SparseAutoencoder):
    uses_auxk = True

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        # Zero = not estimated yet; the first training step sets it outright.
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder_input(x) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            from saefeat.kernels import batch_topk_encode

            return batch_topk_encode(self.encoder_input(x), self.W_enc, self.b_enc, self.cfg.k)
        pre = self.pre_acts(x)
        return dense_to_sparse(pre * (pre > self.threshold))

    @torch.no_grad()
    def after_step(self, out: SAEOutput) -> None:
        active = out.vals[out.vals > 0]
        if active.numel() == 0:
            return
        smallest = active.min().float()
        if not bool((self.threshold > 0).any()):
            self.threshold.fill_(smallest)
            return
        rate = self.settings.threshold_ema
        self.threshold.mul_(1 - rate).add_(rate * smallest)
