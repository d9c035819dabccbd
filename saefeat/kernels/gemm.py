"""Triton encoder GEMM, pre = x @ W_enc + b_enc, with the activation fused in its epilogue.

Two epilogues:
- TOPK: relu, store the pre-activations in the compute dtype, and store the max of every
  SEL_BLOCK-wide column block per row. The block maxima let the top-k selection skip all
  but k blocks per row (see topk.py).
- JUMP: store the pre-activations and the JumpReLU activations pre * (pre > threshold).

The weight is read as Wt [d_sae, d_in] (the F.linear layout), so the backward can gather
contiguous rows of it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting
from .tl_util import UPCAST_DOT, dot_precision, mma

EPILOGUE_TOPK = 0
EPILOGUE_JUMP = 1

# Width of the column blocks whose maxima guide the selection. 128 matches a Hopper
# wgmma tile; the interpreter uses a small one so tests cover many blocks cheaply.
SEL_BLOCK = 32 if interpreting() else 128


@triton.jit
def _cast_transpose_kernel(
    src_ptr,
    dst_ptr,
    R,
    C,
    stride_sr,
    stride_sc,
    stride_dc,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """dst[c, r] = src[r, c] in dst's dtype; the tile goes through shared memory."""
    offs_r = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    offs_c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    mask = (offs_r[:, None] < R) & (offs_c[None, :] < C)
    tile = tl.load(src_ptr + offs_r[:, None] * stride_sr + offs_c[None, :] * stride_sc, mask=mask)
    dst = dst_ptr + offs_c[None, :] * stride_dc + offs_r[:, None]
    tl.store(dst, tile.to(dst_ptr.dtype.element_ty), mask=mask)


def latent_rows(W_enc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W_enc [d_in, d_sae] as contiguous rows [d_sae, d_in] in `dtype`, in one pass."""
    R, C = W_enc.shape
    out = torch.empty((C, R), dtype=dtype, device=W_enc.device)
    block = 32 if interpreting() else 64
    grid = (triton.cdiv(R, block), triton.cdiv(C, block))
    _cast_transpose_kernel[grid](
        W_enc,
        out,
        R,
        C,
        W_enc.stride(0),
        W_enc.stride(1),
        out.stride(0),
        BLOCK_R=block,
        BLOCK_C=block,
    )
    return out


def _configs() -> list[triton.Config]:
    if interpreting():
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4})]
    cfg = triton.Config
    return [
        cfg(
            {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3
        ),
        cfg(
            {"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3
        ),
        cfg(
            {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4
        ),
        cfg(
            {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4
        ),
        cfg(
            {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4
        ),
    ]


@triton.autotune(configs=_configs(), key=["M", "N", "K", "EPILOGUE"])
@triton.jit
def _encode_gemm_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    th_ptr,
    pre_ptr,
    acts_ptr,
    bmax_ptr,
    M,
    N,
    K,
    NB,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_pm,
    stride_am,
    stride_bm,
    EPILOGUE: tl.constexpr,
    SEL: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped launch order: GROUP_M row blocks share each weight tile while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(a, b, acc, PRECISION, UPCAST)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Bias in fp32 before the single rounding to the stored dtype.
    acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    pre_ptrs = pre_ptr + offs_m[:, None] * stride_pm + offs_n[None, :]
    if EPILOGUE == 0:
        # `where` (not maximum) so -0.0 and NaN become +0.0: the selection compares bits.
        acc = tl.where(acc > 0, acc, 0.0)
        stored = acc.to(pre_ptr.dtype.element_ty)
        tl.store(pre_ptrs, stored, mask=mask)
        blocks: tl.constexpr = BLOCK_N // SEL
        bmax = tl.max(tl.reshape(stored.to(tl.float32), (BLOCK_M, blocks, SEL)), axis=2)
        offs_b = pid_n * blocks + tl.arange(0, blocks)
        tl.store(
            bmax_ptr + offs_m[:, None] * stride_bm + offs_b[None, :],
            bmax,
            mask=mask_m[:, None] & (offs_b[None, :] < NB),
        )
    else:
        stored = acc.to(pre_ptr.dtype.element_ty)
        tl.store(pre_ptrs, stored, mask=mask)
        # Decide on the rounded value so the backward's mask (from stored pre) agrees.
        rounded = stored.to(tl.float32)
        th = tl.load(th_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acts = tl.where(rounded > th[None, :], rounded, 0.0)
        tl.store(
            acts_ptr + offs_m[:, None] * stride_am + offs_n[None, :],
            acts.to(acts_ptr.dtype.element_ty),
            mask=mask,
        )


def _launch(
    x_c: torch.Tensor,
    w_t: torch.Tensor,
    b: torch.Tensor,
    pre: torch.Tensor,
    *,
    epilogue: int,
    threshold: torch.Tensor | None = None,
    acts: torch.Tensor | None = None,
    bmax: torch.Tensor | None = None,
) -> None:
    M, K = x_c.shape
    N = w_t.shape[0]
    nb = triton.cdiv(N, SEL_BLOCK)
    dummy = pre
    th = threshold if threshold is not None else b
    acts_t = acts if acts is not None else dummy
    bmax_t = bmax if bmax is not None else dummy

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    _encode_gemm_kernel[grid](
        x_c,
        w_t,
        b,
        th,
        pre,
        acts_t,
        bmax_t,
        M,
        N,
        K,
        nb,
        x_c.stride(0),
        x_c.stride(1),
        w_t.stride(0),
        w_t.stride(1),
        pre.stride(0),
        acts_t.stride(0),
        bmax_t.stride(0),
        EPILOGUE=epilogue,
        SEL=SEL_BLOCK,
        PRECISION=dot_precision(x_c.dtype),
        UPCAST=UPCAST_DOT,
    )


def encode_relu_blockmax(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """relu(x_c @ w_t.T + b) in x_c's dtype [B, d_sae], and its SEL_BLOCK column-block maxima."""
    M, N = x_c.shape[0], w_t.shape[0]
    pre = torch.empty((M, N), dtype=x_c.dtype, device=x_c.device)
    bmax = torch.empty((M, triton.cdiv(N, SEL_BLOCK)), dtype=torch.float32, device=x_c.device)
    _launch(x_c, w_t, b, pre, epilogue=EPILOGUE_TOPK, bmax=bmax)
    return pre, bmax


def encode_jump(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor, threshold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts, pre), both [B, d_sae] in x_c's dtype: acts = pre * (pre > threshold)."""
    M, N = x_c.shape[0], w_t.shape[0]
    pre = torch.empty((M, N), dtype=x_c.dtype, device=x_c.device)
    acts = torch.empty_like(pre)
    _launch(x_c, w_t, b, pre, epilogue=EPILOGUE_JUMP, threshold=threshold, acts=acts)
    return acts, pre
