"""Which device a job runs on, decided in one place: the one its spec names, else a GPU
when the cluster (or machine) has one, else the CPU."""

from __future__ import annotations


def pick_device(asked: str | None, n_gpus: int) -> str:
    """`asked` ("cpu", "cuda", "cuda:N"; None or "auto": pick), given the GPUs there are."""
    if asked is not None and asked != "auto":
        return asked
    return "cuda" if n_gpus > 0 else "cpu"


def on_gpu(device: str) -> bool:
    return device.startswith("cuda")
