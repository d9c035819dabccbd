"""Which implementation runs a kernel call: Triton or the plain-torch reference.

`SAEFEAT_KERNELS` chooses, read on every call so tests can switch it:

- `auto` (default): Triton when every tensor is on CUDA (none float64) and triton imports,
  else torch.
- `triton`: always Triton. On CPU tensors this needs `TRITON_INTERPRET=1` (set before
  triton is imported), which is how the Triton kernels are tested without a GPU.
- `torch`: always the reference.

The compute dtype follows autocast: inside `torch.autocast(device, dtype)` the GEMMs and
gathers read their inputs in that dtype (bf16 on Hopper) and accumulate in fp32; outside
autocast they run in the parameters' dtype. Parameters and their gradients keep their
own dtype (fp32 master weights).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "SAEFEAT_KERNELS"


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install without a driver
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r} is not allowed; use one of {', '.join(BACKENDS)}")
    return value


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when this call should run the Triton kernels."""
    mode = requested_backend()
    if mode == "torch":
        return False
    present = [t for t in tensors if t is not None]
    on_cuda = all(t.is_cuda for t in present)
    if mode == "auto":
        # The kernels compute in at most fp32; float64 work stays exact on the reference.
        no_f64 = all(t.dtype != torch.float64 for t in present)
        return on_cuda and no_f64 and triton_available()
    if not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton but triton does not import; install saefeat[triton]")
    if not on_cuda and not interpreting():
        raise RuntimeError(
            f"{ENV_VAR}=triton on CPU tensors needs TRITON_INTERPRET=1 set before importing triton"
        )
    return True


def compute_dtype(x: torch.Tensor, *weights: torch.Tensor) -> torch.dtype:
    """The dtype GEMM/gather inputs are read in: the autocast dtype, else the promoted one."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    dtype = x.dtype
    for w in weights:
        dtype = torch.promote_types(dtype, w.dtype)
    return dtype


def param_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype outputs that feed the loss are returned in (fp32 for fp32 masters)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def ops_for(*tensors: torch.Tensor | None) -> ModuleType:
    """The module of primitives for this call: triton_ops or reference (same names)."""
    if use_triton(*tensors):
        from . import triton_ops

        return triton_ops
    from . import reference

    return reference
