"""Triton Adam steps: plain (elementwise) and the decoder's fused row step.

The decoder step does, per row w of W_dec with gradient g, in one read of (w, g, m, v) and
one write of (w, m, v):
  g <- g - (g.w / w.w) w                  (drop the part that only changes the row's norm)
  m, v <- Adam moments of g;  w <- w - lr/bc1 * m / (sqrt(v / bc2) + eps)
  w <- w / |w|                            (unit-norm decoder rows)
Rows up to MAX_REGISTER_ROW wide stay in registers; wider rows take three chunked passes.
The gradient tensor itself is left as it was.

Both kernels compute in fp32 and store m and v in their own dtype: fp32, or bf16 (half
the state's bytes) rounded stochastically, because with round-to-nearest v * 0.999 rounds
back to v in bf16 and the second moment would never decay. The random bits are a hash of
(element index, step, salt), the same bits as reference.random_bits for contiguous
tensors. With `hyper` (a device tensor [step_size, bias_correction2, step]) the kernels
read the step-dependent scalars from memory, so a captured CUDA graph replays them right.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference
from .dispatch import interpreting

MAX_REGISTER_ROW = 8192
_BLOCK = 256 if interpreting() else 2048
_ROW_CHUNK = 32 if interpreting() else 2048


@triton.jit
def _hash(x):
    """uint32 -> uint32 mixing (reference._hash is its torch twin)."""
    x = (x ^ (x >> 16)) * 0x45D9F3B
    x = (x ^ (x >> 16)) * 0x45D9F3B
    return x ^ (x >> 16)


@triton.jit
def _scalars(hyper_ptr, step_size, inv_sqrt_bc2, step, salt, HYPER: tl.constexpr):
    """(step size, 1 / sqrt(bias correction 2), random seed) from arguments or memory."""
    if HYPER:
        size = tl.load(hyper_ptr)
        inv = 1.0 / tl.sqrt(tl.load(hyper_ptr + 1))
        count = tl.load(hyper_ptr + 2)
    else:
        size = step_size
        inv = inv_sqrt_bc2
        count = step
    seed = salt.to(tl.uint32) + count.to(tl.uint32) * 65599
    return size, inv, _hash(seed)


@triton.jit
def _stochastic_bf16(x, r):
    """x (fp32) rounded to a bf16 value (kept in fp32), up with probability of the dropped
    bits' fraction: r holds 16 random bits."""
    bits = x.to(tl.uint32, bitcast=True) + r
    return ((bits >> 16) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _state_out(m, v, elem, seed, STOCHASTIC: tl.constexpr):
    """The moments as they will be stored (bf16 state: stochastically rounded)."""
    if STOCHASTIC:
        r = _hash(elem.to(tl.uint32) + seed)
        m = _stochastic_bf16(m, r & 0xFFFF)
        v = _stochastic_bf16(v, r >> 16)
    return m, v


@triton.jit(do_not_specialize=["step", "salt"])
def _adam_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    hyper_ptr,
    n,
    step_size,
    inv_sqrt_bc2,
    step,
    salt,
    beta1,
    beta2,
    omb1,
    omb2,
    eps,
    BLOCK: tl.constexpr,
    HYPER: tl.constexpr,
    STOCHASTIC: tl.constexpr,
):
    size, inv, seed = _scalars(hyper_ptr, step_size, inv_sqrt_bc2, step, salt, HYPER)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(p_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
    m = beta1 * m + omb1 * g
    v = beta2 * v + omb2 * g * g
    p -= size * m / (tl.sqrt(v) * inv + eps)
    m, v = _state_out(m, v, offs, seed, STOCHASTIC)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _decoder_row_update(w, g, m, v, gw, ww, step_size, inv_sqrt_bc2, beta1, beta2, omb1, omb2, eps):
    g = g - (gw / tl.maximum(ww, 1e-30)) * w
    m = beta1 * m + omb1 * g
    v = beta2 * v + omb2 * g * g
    w = w - step_size * m / (tl.sqrt(v) * inv_sqrt_bc2 + eps)
    return w, m, v


@triton.jit(do_not_specialize=["step", "salt"])
def _decoder_adam_kernel(
    p_ptr,
    g_ptr,
    m_ptr,
    v_ptr,
    hyper_ptr,
    R,
    D,
    stride_p,
    stride_g,
    stride_m,
    stride_v,
    step_size,
    inv_sqrt_bc2,
    step,
    salt,
    beta1,
    beta2,
    omb1,
    omb2,
    eps,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IN_REGISTERS: tl.constexpr,
    HYPER: tl.constexpr,
    STOCHASTIC: tl.constexpr,
):
    step_size, inv_sqrt_bc2, seed = _scalars(hyper_ptr, step_size, inv_sqrt_bc2, step, salt, HYPER)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < R
    rows = rows.to(tl.int64)
    p_rows = p_ptr + rows[:, None] * stride_p
    g_rows = g_ptr + rows[:, None] * stride_g
    m_rows = m_ptr + rows[:, None] * stride_m
    v_rows = v_ptr + rows[:, None] * stride_v
    if IN_REGISTERS:
        offs = tl.arange(0, BLOCK_D)[None, :]
        mask = row_ok[:, None] & (offs < D)
        w = tl.load(p_rows + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_rows + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(m_rows + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_rows + offs, mask=mask, other=0.0).to(tl.float32)
        gw = tl.sum(g * w, 1)[:, None]
        ww = tl.sum(w * w, 1)[:, None]
        w, m, v = _decoder_row_update(
            w, g, m, v, gw, ww, step_size, inv_sqrt_bc2, beta1, beta2, omb1, omb2, eps
        )
        w = tl.where(mask, w, 0.0)
        w = w / tl.maximum(tl.sqrt(tl.sum(w * w, 1)), 1e-12)[:, None]
        m, v = _state_out(m, v, rows[:, None] * D + offs, seed, STOCHASTIC)
        tl.store(p_rows + offs, w.to(p_ptr.dtype.element_ty), mask=mask)
        tl.store(m_rows + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_rows + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    else:
        gw = tl.zeros((ROWS,), dtype=tl.float32)
        ww = tl.zeros((ROWS,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)[None, :]
            mask = row_ok[:, None] & (offs < D)
            w = tl.load(p_rows + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_rows + offs, mask=mask, other=0.0).to(tl.float32)
            gw += tl.sum(g * w, 1)
            ww += tl.sum(w * w, 1)
        nn = tl.zeros((ROWS,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)[None, :]
            mask = row_ok[:, None] & (offs < D)
            w = tl.load(p_rows + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_rows + offs, mask=mask, other=0.0).to(tl.float32)
            m = tl.load(m_rows + offs, mask=mask, other=0.0).to(tl.float32)
            v = tl.load(v_rows + offs, mask=mask, other=0.0).to(tl.float32)
            w, m, v = _decoder_row_update(
                w,
                g,
                m,
                v,
                gw[:, None],
                ww[:, None],
                step_size,
                inv_sqrt_bc2,
                beta1,
                beta2,
                omb1,
                omb2,
                eps,
            )
            w = tl.where(mask, w, 0.0)
            nn += tl.sum(w * w, 1)
            m, v = _state_out(m, v, rows[:, None] * D + offs, seed, STOCHASTIC)
            tl.store(p_rows + offs, w.to(p_ptr.dtype.element_ty), mask=mask)
            tl.store(m_rows + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
            tl.store(v_rows + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
        inv = (1.0 / tl.maximum(tl.sqrt(nn), 1e-12))[:, None]
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)[None, :]
            mask = row_ok[:, None] & (offs < D)
            w = tl.load(p_rows + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(p_rows + offs, (w * inv).to(p_ptr.dtype.element_ty), mask=mask)


def _same_dense_layout(*ts: torch.Tensor) -> bool:
    first = ts[0]
    dense = first.is_contiguous() or (first.dim() == 2 and first.t().is_contiguous())
    return dense and all(t.stride() == first.stride() for t in ts)


def _launch_scalars(
    step_size: float,
    bias_correction2: float,
    step: float,
    salt: int,
    hyper: torch.Tensor | None,
    m: torch.Tensor,
) -> dict:
    """The kernels' step-dependent arguments: floats, or `hyper` read on the device."""
    if hyper is not None:
        if hyper.dtype != torch.float32 or hyper.numel() != 3 or not hyper.is_contiguous():
            raise ValueError("hyper must be a contiguous float32 [step_size, bc2, step]")
        step_size, bias_correction2, step = 0.0, 1.0, 0.0
    return {
        "step_size": step_size,
        "inv_sqrt_bc2": 1.0 / bias_correction2**0.5,
        "step": float(step),
        "salt": int(salt),
        "HYPER": hyper is not None,
        "STOCHASTIC": reference.stochastic_state(m),
    }


def adam_(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step_size: float,
    bias_correction2: float,
    beta1: float,
    beta2: float,
    eps: float,
    *,
    step: float = 1.0,
    salt: int = 0,
    hyper: torch.Tensor | None = None,
) -> None:
    """In-place Adam on p, m, v; walks the shared storage order when layouts agree."""
    if not _same_dense_layout(p, m, v):  # odd strides: the torch twin handles any layout
        reference.adam_(p, g, m, v, step_size, bias_correction2, beta1, beta2, eps,
                        step=step, salt=salt, hyper=hyper)  # fmt: skip
        return
    if g.stride() != p.stride():
        g = torch.empty_like(p).copy_(g)
    n = p.numel()
    if n == 0:
        return
    scalars = _launch_scalars(step_size, bias_correction2, step, salt, hyper, m)
    _adam_kernel[(triton.cdiv(n, _BLOCK),)](
        p,
        g,
        m,
        v,
        hyper if hyper is not None else p,
        n,
        scalars["step_size"],
        scalars["inv_sqrt_bc2"],
        scalars["step"],
        scalars["salt"],
        beta1,
        beta2,
        1.0 - beta1,
        1.0 - beta2,
        eps,
        BLOCK=_BLOCK,
        HYPER=scalars["HYPER"],
        STOCHASTIC=scalars["STOCHASTIC"],
        num_warps=8,
    )


def decoder_adam_(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step_size: float,
    bias_correction2: float,
    beta1: float,
    beta2: float,
    eps: float,
    *,
    step: float = 1.0,
    salt: int = 0,
    hyper: torch.Tensor | None = None,
) -> None:
    """Fused decoder step on rows of p [d_sae, d_in] (rows must be contiguous)."""
    if g.stride(1) != 1:
        g = g.contiguous()
    if not (p.stride(1) == m.stride(1) == v.stride(1) == 1):
        reference.decoder_adam_(p, g, m, v, step_size, bias_correction2, beta1, beta2, eps,
                                step=step, salt=salt, hyper=hyper)  # fmt: skip
        return
    R, D = p.shape
    if R == 0:
        return
    in_registers = D <= MAX_REGISTER_ROW
    block = triton.next_power_of_2(D) if in_registers else _ROW_CHUNK
    # Narrow rows share a program so each still moves a few thousand elements.
    rows = 16 if interpreting() else max(1, min(16, 2048 // block))
    scalars = _launch_scalars(step_size, bias_correction2, step, salt, hyper, m)
    _decoder_adam_kernel[(triton.cdiv(R, rows),)](
        p,
        g,
        m,
        v,
        hyper if hyper is not None else p,
        R,
        D,
        p.stride(0),
        g.stride(0),
        m.stride(0),
        v.stride(0),
        scalars["step_size"],
        scalars["inv_sqrt_bc2"],
        scalars["step"],
        scalars["salt"],
        beta1,
        beta2,
        1.0 - beta1,
        1.0 - beta2,
        eps,
        ROWS=rows,
        BLOCK_D=block,
        IN_REGISTERS=in_registers,
        HYPER=scalars["HYPER"],
        STOCHASTIC=scalars["STOCHASTIC"],
        num_warps=min(16, max(4, rows * block // 512)),
    )
