"""Triton backward of JumpReLU: one pass over the saved pre-activations.

grad_pre = grad_acts * H(pre - t) and the threshold's straight-through gradient
sum_b [-(t / bw) * grad_acts - grad_l0 / bw] * rect((pre - t) / bw), reduced per column
tile and added with atomics, so no second [B, d_sae] temporary is built.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting

_BLOCK_M, _BLOCK_N = (16, 32) if interpreting() else (32, 256)


@triton.jit
def _jump_backward_kernel(
    ga_ptr,
    gl0_ptr,
    pre_ptr,
    th_ptr,
    gpre_ptr,
    gth_ptr,
    M,
    N,
    bandwidth,
    stride_ga,
    stride_pre,
    stride_gp,
    HAS_GA: tl.constexpr,
    HAS_L0: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    offs_m = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    mask = mask_m[:, None] & mask_n[None, :]
    p = tl.load(pre_ptr + offs_m[:, None] * stride_pre + offs_n[None, :], mask=mask, other=0.0)
    p = p.to(tl.float32)
    t = tl.load(th_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    u = (p - t) / bandwidth
    rect = (u > -0.5) & (u < 0.5) & mask
    g_t = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_GA:
        g = tl.load(ga_ptr + offs_m[:, None] * stride_ga + offs_n[None, :], mask=mask, other=0.0)
        g = g.to(tl.float32)
        gp = tl.where(p > t, g, 0.0)
        tl.store(
            gpre_ptr + offs_m[:, None] * stride_gp + offs_n[None, :],
            gp.to(gpre_ptr.dtype.element_ty),
            mask=mask,
        )
        g_t -= g * (t / bandwidth)
    if HAS_L0:
        gl = tl.load(gl0_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)
        g_t -= gl[:, None] / bandwidth
    col = tl.sum(tl.where(rect, g_t, 0.0), axis=0)
    tl.atomic_add(gth_ptr + offs_n, col, mask=mask_n)


def jump_backward(
    grad_acts: torch.Tensor | None,
    grad_l0: torch.Tensor | None,
    pre: torch.Tensor,
    threshold: torch.Tensor,
    bandwidth: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(grad_pre in pre's dtype or None, fp32 grad_threshold)."""
    M, N = pre.shape
    grad_th = torch.zeros(N, dtype=torch.float32, device=pre.device)
    grad_pre = torch.empty_like(pre) if grad_acts is not None else None
    if grad_acts is not None and grad_acts.stride(1) != 1:
        grad_acts = grad_acts.contiguous()
    if M == 0:
        return grad_pre, grad_th
    ga = grad_acts if grad_acts is not None else pre
    gp = grad_pre if grad_pre is not None else pre
    gl0 = grad_l0.contiguous() if grad_l0 is not None else grad_th
    grid = (triton.cdiv(M, _BLOCK_M), triton.cdiv(N, _BLOCK_N))
    _jump_backward_kernel[grid](
        ga,
        gl0,
        pre,
        threshold,
        gp,
        grad_th,
        M,
        N,
        float(bandwidth),
        ga.stride(0),
        pre.stride(0),
        gp.stride(0),
        HAS_GA=grad_acts is not None,
        HAS_L0=grad_l0 is not None,
        BLOCK_M=_BLOCK_M,
        BLOCK_N=_BLOCK_N,
    )
    return grad_pre, grad_th
