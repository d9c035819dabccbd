"""TopK SAE (Gao et al. 2024; sparsify's default): keep the k largest relu'd latents."""

from __future__ import annotations

from typing import Literal

import torch

from saefeat.sae.base import ActiveCount, ArchConfig, SparseAutoencoder, register


class TopKConfig(ArchConfig):
    name: Literal["topk"] = "topk"
    k: ActiveCount = 32  # active latents per token


@register(TopKConfig)
class TopKSAE(SparseAutoencoder):
    uses_auxk = True

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from saefeat.kernels import topk_encode

        return topk_encode(self.encoder_input(x), self.W_enc, self.b_enc, self.cfg.k)
