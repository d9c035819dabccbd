"""SAEAdam: Adam whose decoder step also keeps decoder rows at unit norm, in one pass.

For the decoder weight (rows are latents, [d_sae, d_in]) each step removes the gradient
component parallel to each row before the Adam update and renormalises each row to unit
norm after it, fused into one kernel (what sparsify and OpenAI do in three separate passes:
project the gradient, Adam, renormalise). Every other parameter gets plain Adam (no weight
decay, no amsgrad). p.grad is read, never modified. Triton on CUDA, torch elsewhere (see
dispatch.py).

`state_dtype=torch.bfloat16` keeps Adam's two moments in bf16 (computed in fp32, stored
stochastically rounded; see adam.py): 4 bytes of state per parameter instead of 8, at
the held-out FVU of fp32 state (bench/RESULTS.md). It is for the GPU: the CPU path (the
torch reference) builds fp32 temporaries per parameter, so there its peak memory is
above fp32 state's and a step is slower; on the CPU it only checks the arithmetic.
`capturable=True` keeps each step count on the parameter's device and hands the kernels
their step-dependent scalars as a device tensor, so a step can be captured in a CUDA
graph and replayed (no host reads; `lr` may then be a 0-dim device tensor to change
between replays).
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
        state_dtype: torch.dtype = torch.float32,
        capturable: bool = False,
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
        if state_dtype not in reference.STATE_DTYPES:
            raise ValueError(f"state_dtype must be float32 or bfloat16, got {state_dtype}")
        self.decoder = decoder
        self.state_dtype = state_dtype
        self.capturable = capturable

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        salt = 0  # the parameter's place: its own random bits for bf16 rounding
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            todo = []
            for p in group["params"]:
                salt += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("SAEAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, state)
                todo.append((p, state, salt))
            if not todo:
                continue
            if self.capturable:
                self._capturable_steps(todo, group, beta1, beta2)
                continue
            for p, state, salt_p in todo:
                state["step"] += 1
                if _fused_cpu(p):
                    self._cpu_step(p, state, group, beta1, beta2, salt_p)
                    continue
                step = float(state["step"])
                self._update(p, state, group, float(group["lr"]) / (1 - beta1**step),
                             1 - beta2**step, step=step, salt=salt_p)  # fmt: skip
        return loss

    def _init_state(self, p: torch.Tensor, state: dict) -> None:
        where = p.device if self.capturable else torch.device("cpu")
        state["step"] = torch.zeros((), dtype=torch.float32, device=where)
        for key in ("exp_avg", "exp_avg_sq"):
            state[key] = torch.zeros_like(p, dtype=self.state_dtype,
                                          memory_format=torch.preserve_format)  # fmt: skip

    def _capturable_steps(self, todo: list, group: dict, beta1: float, beta2: float) -> None:
        """Steps counted and scalars computed on the device: a few launches per group,
        then one kernel per parameter reading its row of the [n, 3] table."""
        steps = [state["step"] for _, state, _ in todo]
        torch._foreach_add_(steps, 1.0)
        count = torch.stack(steps).double()
        lr = group["lr"]
        lr = lr.double() if isinstance(lr, torch.Tensor) else lr
        table = torch.stack(
            [lr / (1 - torch.pow(beta1, count)), 1 - torch.pow(beta2, count), count], dim=1
        ).float()
        for i, (p, state, salt_p) in enumerate(todo):
            self._update(p, state, group, 0.0, 1.0, hyper=table[i], salt=salt_p)

    def _update(self, p, state, group, step_size, bias_correction2, **scalars) -> None:
        ops = ops_for(p)
        update = ops.decoder_adam_ if p is self.decoder else ops.adam_
        update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], step_size, bias_correction2,
               *group["betas"], group["eps"], **scalars)  # fmt: skip

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts loaded moments to the parameter's dtype; they go back to this
        optimizer's state dtype (and the step to where this optimizer counts)."""
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key] = state[key].to(self.state_dtype)
            if "step" in state:
                where = p.device if self.capturable else torch.device("cpu")
                state["step"] = state["step"].to(device=where, dtype=torch.float32)

    @torch.no_grad()
    def _cpu_step(self, p, state, group, beta1: float, beta2: float, salt: int) -> None:
        """torch's fused CPU Adam (one vectorised pass) plus the decoder's projection and
        renormalisation: ~4x faster than the reference's separate elementwise passes.
        bf16 moments go through fp32 copies and are stored back rounded."""
        g = reference.remove_parallel(p.grad, p) if p is self.decoder else p.grad
        m, v = state["exp_avg"], state["exp_avg_sq"]
        narrow = reference.stochastic_state(m, v)
        m32, v32 = (m.float(), v.float()) if narrow else (m, v)
        torch._fused_adam_(
            [p], [g], [m32], [v32], [], [state["step"]],
            lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0, eps=group["eps"],
            amsgrad=False, maximize=False,
        )  # fmt: skip
        if narrow:
            reference.store_moments(m, v, m32, v32, float(state["step"]), salt)
        if p is self.decoder:
            reference.renormalise_rows_(p)


def _fused_cpu(p: torch.Tensor) -> bool:
    return (
        p.device.type == "cpu"
        and p.dtype == torch.float32
        and requested_backend() == "auto"
        and hasattr(torch, "_fused_adam_")
    )
