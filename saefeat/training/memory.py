"""Memory estimate of a training run, checked before anything is allocated."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from saefeat.errors import SpecError
from saefeat.training.run import STATE_DTYPES

# Architectures whose training forward holds dense [batch, d_sae] activations.
DENSE_ARCHITECTURES = {"relu", "jumprelu", "batchtopk", "matryoshka_batchtopk"}
HEADROOM = 0.9  # leave a tenth of what is free for everything else


def estimate_bytes(
    d_in: int, d_sae: int, batch_size: int, architecture: str, optimizer_state: str = "fp32"
) -> dict[str, int]:
    """fp32 params + gradients + Adam's two moments (fp32 or bf16) + per-batch activations."""
    n_params = 2 * d_in * d_sae + 2 * d_sae + d_in  # W_enc, W_dec, b_enc, threshold, b_dec
    params = 4 * n_params
    adam = 2 * n_params * STATE_DTYPES[optimizer_state].itemsize
    # Pre-activations [B, d_sae] (and their gradient for dense architectures), plus a
    # handful of [B, d_in] copies: input, reconstruction, residual, gradients.
    per_latent = 3 if architecture in DENSE_ARCHITECTURES else 1
    acts = 4 * batch_size * (per_latent * d_sae + 6 * d_in)
    return {"params": params, "grads": params, "adam": adam, "activations": acts,
            "total": 2 * params + adam + acts}  # fmt: skip


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(estimates: list[tuple[str, dict[str, int]]], device: torch.device) -> None:
    """Refuse runs whose estimated total exceeds what the device has free, with numbers."""
    need = sum(e["total"] for _, e in estimates)
    free = available_bytes(device)
    if need <= HEADROOM * free:
        return
    gib = 1024**3
    parts = "; ".join(
        f"{name}: params {e['params'] / gib:.2f} + grads {e['grads'] / gib:.2f} + Adam "
        f"{e['adam'] / gib:.2f} + activations {e['activations'] / gib:.2f} GiB"
        for name, e in estimates
    )
    raise SpecError(
        f"training needs about {need / gib:.2f} GiB but {device} has {free / gib:.2f} GiB free "
        f"({parts}); use a smaller d_sae or batch_size",
        field="d_sae",
    )
