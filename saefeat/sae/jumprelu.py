"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope).

A latent fires when its pre-activation exceeds its own learned `threshold`; the threshold
learns through the kernels' straight-through estimator (rectangle kernel of width
`bandwidth`). Sparsity comes from an L0 penalty: either towards a target L0,
coef * (L0 / target - 1)^2 (dictionary_learning), or coef * L0 (Gemma Scope). Gradients of
the L0 term reach only the thresholds.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from saefeat.errors import SpecError
from saefeat.sae.base import (
    ArchConfig,
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    TrainStep,
    dense_to_sparse,
    dense_train_step,
    register,
)


class JumpReLUConfig(ArchConfig):
    name: Literal["jumprelu"] = "jumprelu"
    # Sparsity: coef * (L0/target - 1)^2 towards target_l0, or coef * L0 when it is None.
    target_l0: float | None = Field(32.0, gt=0, description="L0 the sparsity term aims at")
    sparsity_coefficient: float = Field(1.0, ge=0, description="weight of the sparsity term")
    bandwidth: float = Field(0.001, gt=0, description="STE rectangle width (Gemma Scope's)")
    init_threshold: float = Field(0.001, ge=0, description="every latent's first threshold")

    def check_width(self, d_sae: int) -> None:
        if self.target_l0 is not None and self.target_l0 >= d_sae:
            raise SpecError(f"target_l0 must be < d_sae ({d_sae}), got {self.target_l0}",
                            field="target_l0")  # fmt: skip


@register(JumpReLUConfig)
class JumpReLUSAE(SparseAutoencoder):
    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), self.settings.init_threshold))

    def _acts(self, x: torch.Tensor, want_l0: bool):
        from saefeat.kernels import jumprelu_encode

        return jumprelu_encode(self.encoder_input(x), self.W_enc, self.b_enc, self.threshold,
                               self.settings.bandwidth, return_l0=want_l0)  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dense_to_sparse(self._acts(x, False))

    def training_loss(
        self, x: torch.Tensor, variance: torch.Tensor, y: torch.Tensor | None = None
    ) -> TrainStep:
        acts, l0 = self._acts(x, True)
        mean_l0 = l0.float().mean()
        coef = self.settings.sparsity_coefficient
        target = self.settings.target_l0
        sparsity = coef * (mean_l0 / target - 1).pow(2) if target else coef * mean_l0
        parts = {"l0": mean_l0.detach(), "sparsity": sparsity}
        return dense_train_step(self, x, x if y is None else y, acts, variance, sparsity, parts)

    @torch.no_grad()
    def after_step(self, out: SAEOutput) -> None:
        # A negative threshold would let negative pre-activations through (acts = pre).
        self.threshold.clamp_(min=0.0)
