"""Small helpers shared by the Triton launchers."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting

_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The triton dtype tensor-core inputs are cast to; float64 runs as float32."""
    return _TL_DTYPES.get(dtype, tl.float32)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots honour torch's TF32 switch; 16-bit dots ignore the setting."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


# The interpreter (TRITON_INTERPRET=1, triton 3.9) multiplies bf16 dot operands as their raw
# uint16 bits; kernels upcast operands to fp32 there, which changes no result on CPU.
UPCAST_DOT = interpreting()


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)
