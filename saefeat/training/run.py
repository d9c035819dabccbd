"""One SAE being trained: its weights, optimizer, dead-latent clock and one step.

The trainer owns the data loop; a Run only sees batches, so several Runs can share a
reader (train_sweep). The loss is the architecture's own (`training_loss`) plus AuxK for
the TopK family, under bf16 autocast over fp32 master weights where bf16 is fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from saefeat.errors import SaefeatError
from saefeat.kernels import SAEAdam, auxk_loss
from saefeat.lm import auto_dtype
from saefeat.sae import SparseAutoencoder
from saefeat.specs import TrainSpec
from saefeat.training.schedule import default_lr, lr_factor
from saefeat.training.sources import Reads

STATE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # TrainSpec.optimizer_state


class TrainingDiverged(SaefeatError):
    """The loss went NaN/Inf; the last good checkpoint is kept."""


@dataclass
class Run:
    spec: TrainSpec
    sae_id: str
    hook: str
    sae: SparseAutoencoder
    # Inputs are multiplied by this (unit mean squared norm), per dimension: a crosscoder's
    # sources each have their own.
    scale: torch.Tensor
    dead_after: int  # tokens without firing before a latent counts as dead
    # Per-token variance of the scaled targets, from the set's statistics: the FVU
    # denominator of a batch of n rows is n x this, never the batch's own variance, which
    # a short last batch (one row) can make zero.
    token_var: float
    device: torch.device
    reads: Reads | None = None  # its sources (training/sources.py)
    out_scale: torch.Tensor | None = None  # the targets' scale (a transcoder's differ)
    opt: SAEAdam = field(init=False)
    base_lr: float = field(init=False)
    since_fired: torch.Tensor = field(init=False)
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_lr = self.spec.lr or default_lr(self.sae.cfg.d_sae)
        decoder = self.sae.W_dec if self.sae.unit_norm_decoder else None
        self.opt = SAEAdam(self.sae.parameters(), lr=self.base_lr, decoder=decoder,
                           state_dtype=STATE_DTYPES[self.spec.optimizer_state])  # fmt: skip
        self.since_fired = torch.zeros(self.sae.cfg.d_sae, dtype=torch.long, device=self.device)
        self.amp_dtype = auto_dtype(self.device)
        self.k_aux = max(1, self.sae.cfg.d_in // 2)
        self.scale = self.scale.to(self.device)
        self.out_scale = self.scale if self.out_scale is None else self.out_scale.to(self.device)

    def step(
        self, x_raw: torch.Tensor, step: int, total: int, y_raw: torch.Tensor | None = None
    ) -> float:
        """One optimizer step on inputs `x_raw` (and a transcoder's targets `y_raw`)."""
        spec, sae = self.spec, self.sae
        x = x_raw.to(self.device, non_blocking=True) * self.scale
        y = x if y_raw is None else y_raw.to(self.device, non_blocking=True) * self.out_scale
        for g in self.opt.param_groups:
            g["lr"] = self.base_lr * lr_factor(step, total, spec.lr_warmup_frac,
                                               spec.lr_decay_frac)  # fmt: skip
        use_amp = self.amp_dtype == torch.bfloat16
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=use_amp):
            variance = torch.tensor(self.token_var * x.shape[0], device=x.device)
            ts = sae.training_loss(x, variance, None if y_raw is None else y)
            loss = ts.loss
            dead = self.since_fired > self.dead_after
            if sae.uses_auxk and spec.auxk_coefficient > 0 and bool(dead.any()):
                residual = y - ts.out.x_hat.float()
                loss = loss + spec.auxk_coefficient * auxk_loss(
                    sae.encoder_input(x), residual, sae.W_enc, sae.b_enc, sae.W_dec, dead,
                    self.k_aux, variance=variance,  # auxk_loss scales by n_dead / k_aux
                )  # fmt: skip
        value = loss.item()
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss of {self.sae_id} ({self.sae.cfg.architecture}, {self.hook}) is {value} "
                f"at step {step}",
                field="lr",
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), spec.grad_clip)
        self.opt.step()
        sae.after_step(ts.out)
        with torch.no_grad():
            fired = torch.zeros_like(self.since_fired, dtype=torch.bool)
            fired[ts.out.idx[ts.out.vals > 0]] = True
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
        self.losses.append(value)
        return value

    # ---- state for exact resume ------------------------------------------------------

    def identity(self) -> dict:
        cfg = self.sae.cfg
        return {"model": cfg.model, "hook": cfg.hook, "hook_out": cfg.hook_out,
                "activation_set": cfg.activation_set,
                "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae}  # fmt: skip

    def state(self) -> dict:
        return {
            "identity": self.identity(),
            "sae_id": self.sae_id,
            "sae": {k: v.detach().clone() for k, v in self.sae.state_dict().items()},
            "opt": self.opt.state_dict(),  # moments in the run's optimizer_state dtype
            "since_fired": self.since_fired.clone(),
            "losses": list(self.losses),
        }

    def load(self, state: dict) -> None:
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["opt"])  # moments cast to this run's state dtype
        self.since_fired.copy_(state["since_fired"])
        self.losses = list(state["losses"])
