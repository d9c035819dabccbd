"""ReLU SAE with an L1 penalty weighted by decoder row norms (Anthropic, April 2024).

loss = FVU + l1_coefficient * mean_b sum_i f_i(x_b) * ||W_dec[i]||. Weighting by the
norms stops the SAE from shrinking activations and growing the decoder to cheat the
penalty, so the decoder rows stay free (no unit-norm constraint).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from saefeat.sae.base import (
    ArchConfig,
    SparseAutoencoder,
    TrainStep,
    dense_to_sparse,
    dense_train_step,
    register,
)


class ReLUConfig(ArchConfig):
    name: Literal["relu"] = "relu"
    l1_coefficient: float = Field(0.02, ge=0, description="weight of the norm-weighted L1")


@register(ReLUConfig)
class ReLUSAE(SparseAutoencoder):
    unit_norm_decoder = False

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.encoder_input(x) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dense_to_sparse(self.dense(x))

    def training_loss(
        self, x: torch.Tensor, variance: torch.Tensor, y: torch.Tensor | None = None
    ) -> TrainStep:
        acts = self.dense(x)
        l1 = (acts.float() * self.W_dec.norm(dim=1)).sum() / x.shape[0]
        penalty = self.settings.l1_coefficient * l1
        return dense_train_step(self, x, x if y is None else y, acts, variance, penalty,
                                {"l1": l1})  # fmt: skip
