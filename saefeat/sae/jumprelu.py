"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope).

A latent fires when its pre-activation exceeds its own learned `threshold`; the threshold
learns through the kernels' straight-through estimator (rectangle kernel of width
`bandwidth`). Sparsity comes from an L0 penalty: either towards a target L0,
coef * (L0 / target - 1)^2 (dictionary_learning), or coef * L0 (Gemma Scope). Gradients of
the L0 term reach only the thresholds.
"""

from __future__ import annotations

import torch
from torch import nn

from saefeat.sae.base import (
    SAEConfig,
    SAEOutput,
    SparseAutoencoder,
    TrainStep,
    dense_layout,
    dense_to_sparse,
    fvu_loss,
    register,
)

DEFAULTS = {"bandwidth": 0.001, "init_threshold": 0.001, "target_l0": None,
            "sparsity_coefficient": 1.0}  # fmt: skip


@register("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        init = float(self.setting("init_threshold"))
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), init))

    def setting(self, name: str):
        return self.cfg.extra.get(name, DEFAULTS[name])

    def _acts(self, x: torch.Tensor, want_l0: bool):
        from saefeat.kernels import jumprelu_encode

        return jumprelu_encode(x - self.b_dec, self.W_enc, self.b_enc, self.threshold,
                               float(self.setting("bandwidth")), return_l0=want_l0)  # fmt: skip

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dense_to_sparse(self._acts(x, False))

    def training_loss(self, x: torch.Tensor, variance: torch.Tensor) -> TrainStep:
        acts, l0 = self._acts(x, True)
        x_hat = acts @ self.W_dec.to(acts.dtype) + self.b_dec  # dense: most latents fire early
        fvu = fvu_loss(x, x_hat, variance)
        mean_l0 = l0.float().mean()
        coef = float(self.setting("sparsity_coefficient"))
        target = self.setting("target_l0")
        sparsity = coef * (mean_l0 / target - 1).pow(2) if target else coef * mean_l0
        vals, idx = dense_layout(acts.detach())
        out = SAEOutput(x_hat, vals, idx)
        return TrainStep(out, fvu + sparsity, {"fvu": fvu, "l0": mean_l0.detach(),
                                               "sparsity": sparsity})  # fmt: skip

    @torch.no_grad()
    def after_step(self, out: SAEOutput) -> None:
        # A negative threshold would let negative pre-activations through (acts = pre).
        self.threshold.clamp_(min=0.0)
