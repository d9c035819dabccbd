"""Train an SAE on a harvested activation set.

The recipe is sparsify's and OpenAI's: activations scaled to unit mean squared norm,
b_dec at the data mean, encoder initialised as the decoder's transpose, unit-norm
decoder rows with the parallel gradient removed (SAEAdam does both in one pass), FVU as
the loss, AuxK on latents that have not fired for a while, bf16 autocast over fp32
master weights where the hardware is fast at bf16.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saefeat.config import Settings, get_settings
from saefeat.errors import SpecError
from saefeat.kernels import SAEAdam, auxk_loss
from saefeat.lm import auto_dtype
from saefeat.sae import SAEConfig, SparseAutoencoder
from saefeat.sae.base import _REGISTRY
from saefeat.specs import TrainSpec
from saefeat.storage.activations import STATUS_COMPLETE, ActivationSet, open_set
from saefeat.storage.reader import ShuffledBatchReader
from saefeat.training.evaluate import evaluate

Progress = Callable[[int, int, float], None]  # (step, total steps, loss)
AUXK_COEF = 1 / 32
EVAL_TOKENS = 50_000


@dataclass
class TrainResult:
    sae_id: str
    sae: SparseAutoencoder  # in raw activation units (scale folded in)
    checkpoint: Path
    metrics: dict
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def default_lr(d_sae: int) -> float:
    """sparsify's Adam learning rate, scaled by width."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def lr_factor(step: int, total: int, warmup_frac: float = 0.05, decay_frac: float = 0.2) -> float:
    """Linear warm-up, flat, then linear decay to zero over the last `decay_frac`."""
    warm = max(1, int(total * warmup_frac))
    decay_start = int(total * (1 - decay_frac))
    if step < warm:
        return (step + 1) / warm
    if step >= decay_start:
        return max(0.0, (total - step) / max(1, total - decay_start))
    return 1.0


def sae_id_for(spec: TrainSpec, set_id: str) -> str:
    blob = json.dumps({"set": set_id, **spec.model_dump(mode="json")}, sort_keys=True)
    return "sae-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def open_complete_set(settings: Settings, set_id: str) -> ActivationSet:
    aset = open_set(settings.activations_dir, set_id)
    if aset.status != STATUS_COMPLETE:
        raise SpecError(
            f"activation set {set_id} is not complete (status {aset.status}); "
            "finish its harvest first",
            field="activation_set",
        )
    return aset


def build_sae(spec: TrainSpec, aset: ActivationSet, hook: str) -> SparseAutoencoder:
    d_sae = spec.d_sae or spec.expansion_factor * aset.d_model
    cfg = SAEConfig(
        d_in=aset.d_model,
        d_sae=d_sae,
        architecture=spec.architecture,
        k=spec.k,
        model=aset.model_name,
        hook=hook,
        activation_set=aset.id,
    )
    if spec.k >= d_sae:
        raise SpecError(f"k must be < d_sae ({d_sae}), got {spec.k}", field="k")
    return _REGISTRY[spec.architecture](cfg)


def train_sae(
    spec: TrainSpec, *, settings: Settings | None = None, progress: Progress | None = None
) -> TrainResult:
    settings = settings or get_settings()
    t0 = time.perf_counter()
    aset = open_complete_set(settings, spec.activation_set)
    hook = spec.hook or aset.hooks[0]
    aset.acts_array(hook)  # raises when the hook is not in the set
    stats = aset.stats[hook]
    scale = stats["scale"]
    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(spec.seed)

    sae = build_sae(spec, aset, hook).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(torch.tensor(stats["mean"], device=device) * scale)
    opt = SAEAdam(sae.parameters(), lr=spec.lr or default_lr(sae.cfg.d_sae), decoder=sae.W_dec)
    base_lrs = [g["lr"] for g in opt.param_groups]
    reader = ShuffledBatchReader(aset, hook, spec.batch_size, seed=spec.seed)
    total_steps = max(1, int(reader.batches_per_epoch * spec.epochs))
    amp_dtype = auto_dtype(device)
    use_amp = amp_dtype == torch.bfloat16
    # A latent counts as dead for AuxK after half an epoch without firing (capped at
    # sparsify's 10M tokens): short runs need the signal early.
    dead_after = min(10_000_000, reader.rows_per_epoch // 2)
    since_fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    k_aux = max(1, sae.cfg.d_in // 2)

    losses: list[float] = []
    step = 0
    epoch = 0
    while step < total_steps:
        for x in reader.iter_epoch(epoch):
            if step >= total_steps:
                break
            x = x.to(device, non_blocking=True) * scale
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * lr_factor(step, total_steps)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                out = sae(x)
                err = out.x_hat.float() - x
                total_var = (x - x.mean(0)).pow(2).sum()
                loss = err.pow(2).sum() / total_var
                dead = since_fired > dead_after
                if dead.any():
                    loss = loss + AUXK_COEF * auxk_loss(
                        x - sae.b_dec, err.neg(), sae.W_enc, sae.b_enc, sae.W_dec, dead,
                        min(k_aux, int(dead.sum())), variance=total_var,
                    )  # fmt: skip
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; stopped")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                fired = torch.zeros_like(since_fired, dtype=torch.bool)
                fired[out.idx[out.vals > 0]] = True
                since_fired += x.shape[0]
                since_fired[fired] = 0
            losses.append(loss.item())
            step += 1
            if progress:
                progress(step, total_steps, losses[-1])
        epoch += 1

    sae.fold_input_scale(scale)
    sae.eval()
    metrics = evaluate(sae, reader.iter_epoch(0), max_tokens=EVAL_TOKENS)
    metrics.update(steps=step, tokens_trained=step * spec.batch_size, lr=base_lrs[0])
    sae_id = sae_id_for(spec, aset.id)
    checkpoint = sae.save(settings.saes_dir / sae_id, overwrite=True)
    (checkpoint / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(sae_id, sae, checkpoint, metrics, losses, time.perf_counter() - t0)
