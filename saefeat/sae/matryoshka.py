"""Matryoshka BatchTopK SAE (Bussmann et al. 2025; dictionary_learning).

Latents are split into nested groups by `matryoshka_groups` (fractions of d_sae); every
prefix of groups must reconstruct the input on its own, so the loss is the sum over
prefixes of the FVU of the reconstruction from that prefix's latents. The early latents
learn general features, the later ones refine them. Encoding is BatchTopK's.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from saefeat.sae.base import SAEConfig, TrainStep, fvu_loss, register
from saefeat.sae.batchtopk import BatchTopKConfig, BatchTopKSAE


class MatryoshkaConfig(BatchTopKConfig):
    name: Literal["matryoshka_batchtopk"] = "matryoshka_batchtopk"  # type: ignore[assignment]
    matryoshka_groups: tuple[float, ...] = Field(
        (0.0625, 0.125, 0.25, 0.5625), description="fractions of d_sae per nested group (sum 1)"
    )

    @field_validator("matryoshka_groups")
    @classmethod
    def _fractions(cls, g: tuple[float, ...]) -> tuple[float, ...]:
        if not g or any(f <= 0 for f in g) or abs(sum(g) - 1) > 1e-6:
            raise ValueError(
                f"matryoshka_groups must be positive fractions summing to 1, got {list(g)}"
            )
        return g


def group_ends(fractions: list[float] | tuple[float, ...], d_sae: int) -> list[int]:
    """Cumulative latent counts of each prefix; the last is d_sae."""
    ends, total = [], 0.0
    for f in fractions[:-1]:
        total += f
        ends.append(max(1, min(d_sae - 1, round(total * d_sae))))
    ends.append(d_sae)
    return sorted(set(ends))


@register(MatryoshkaConfig)
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.ends = group_ends(self.settings.matryoshka_groups, cfg.d_sae)

    def training_loss(
        self, x: torch.Tensor, variance: torch.Tensor, y: torch.Tensor | None = None
    ) -> TrainStep:
        y = x if y is None else y
        out = self(x)
        full = fvu_loss(y, out.x_hat, variance)
        loss = full
        for end in self.ends[:-1]:  # the full prefix is out.x_hat
            vals = torch.where(out.idx < end, out.vals, torch.zeros_like(out.vals))
            loss = loss + fvu_loss(y, self.skip(x, self.decode(vals, out.idx)), variance)
        return TrainStep(out, loss, {"fvu": full, "matryoshka": loss})
