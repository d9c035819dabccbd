"""SAEAdam: Adam whose decoder step also keeps decoder rows at unit norm, in one pass.

For the decoder weight (rows are latents, [d_sae, d_in]) each step removes the gradient
component parallel to each row before the Adam update and renormalises each row to unit
norm after it, fused into one kernel (what sparsify and OpenAI do in three separate passes:
project the gradient, Adam, renormalise). Every other parameter gets plain Adam (no weight
decay, no amsgrad). p.grad is read, never modified. Triton on CUDA, torch elsewhere (see
dispatch.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import reference
from .dispatch import ops_for, requested_backend


class SAEAdam(torch.optim.Optimizer):
    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        *,
        decoder: torch.Tensor | None = None,
    ):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        if decoder is not None:
            if decoder.dim() != 2:
                raise ValueError(f"decoder must be [d_sae, d_in], got {tuple(decoder.shape)}")
            if not any(p is decoder for g in self.param_groups for p in g["params"]):
                raise ValueError("decoder must be one of the optimised parameters")
        self.decoder = decoder

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SAEAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                if _fused_cpu(p):
                    self._cpu_step(p, state, group, beta1, beta2)
                    continue
                step = float(state["step"])
                bc1 = 1 - beta1**step
                bc2 = 1 - beta2**step
                ops = ops_for(p)
                update = ops.decoder_adam_ if p is self.decoder else ops.adam_
                update(
                    p,
                    p.grad,
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    group["lr"] / bc1,
                    bc2,
                    beta1,
                    beta2,
                    group["eps"],
                )
        return loss

    @torch.no_grad()
    def _cpu_step(self, p, state, group, beta1: float, beta2: float) -> None:
        """torch's fused CPU Adam (one vectorised pass) plus the decoder's projection and
        renormalisation: ~4x faster than the reference's separate elementwise passes."""
        g = reference.remove_parallel(p.grad, p) if p is self.decoder else p.grad
        torch._fused_adam_(
            [p], [g], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
            amsgrad=False, maximize=False,
        )  # fmt: skip
        if p is self.decoder:
            reference.renormalise_rows_(p)


def _fused_cpu(p: torch.Tensor) -> bool:
    return (
        p.device.type == "cpu"
        and p.dtype == torch.float32
        and requested_backend() == "auto"
        and hasattr(torch, "_fused_adam_")
    )
