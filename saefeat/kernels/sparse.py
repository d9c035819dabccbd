"""Triton kernels for a sparse [B, k] code (idx, w) against a dense table of latent rows.

- gather_matmul:  out[b] = sum_j w[b, j] * table[idx[b, j]] (+ bias)     (decode; encoder dx)
- gather_rowdot:  out[b, j] = g[b] . table[idx[b, j]]                    (decoder d vals)
- segment_matmul: out[l] = sum over entries e of latent l of w_e * y[row_e] (dW_dec, dW_enc)

All accumulate in fp32. segment_matmul computes a [BLOCK_L, BLOCK_D] tile of rows as
onehot(latents) * w  @  y[rows], a tensor-core dot over the tile's sorted entries, and
writes every row of the output (zeros for latents that never fired), so the gradient
buffer needs no separate zero fill.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting
from .segments import segments_by_latent
from .tl_util import UPCAST_DOT, dot_precision, mma, tl_dtype

# The interpreter pays per program and per op, not per element: many rows per program.
if interpreting():
    _GATHER = {"ROWS": 16, "BLOCK_J": 8, "BLOCK_D": 32}
    _SEGMENT = {"BLOCK_L": 16, "BLOCK_E": 16, "BLOCK_D": 32}
else:
    _GATHER = {"ROWS": 1, "BLOCK_J": 16, "BLOCK_D": 256}
    _SEGMENT = {"BLOCK_L": 64, "BLOCK_E": 64, "BLOCK_D": 128}


@triton.jit
def _gather_matmul_kernel(
    idx_ptr,
    w_ptr,
    t_ptr,
    bias_ptr,
    out_ptr,
    B,
    K,
    D,
    stride_idx,
    stride_w,
    stride_t,
    stride_o,
    HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    acc = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for j0 in range(0, K, BLOCK_J):
        offs_j = j0 + tl.arange(0, BLOCK_J)
        mask_j = row_ok[:, None] & (offs_j < K)[None, :]
        ids = tl.load(idx_ptr + rows[:, None] * stride_idx + offs_j[None, :], mask=mask_j, other=0)
        w = tl.load(w_ptr + rows[:, None] * stride_w + offs_j[None, :], mask=mask_j, other=0.0)
        w = w.to(tl.float32)
        # Zero weights (relu'd latents, padding) skip their row read entirely.
        live = mask_j & (w != 0)
        vec = tl.load(
            t_ptr + ids.to(tl.int64)[:, :, None] * stride_t + offs_d[None, None, :],
            mask=live[:, :, None] & mask_d[None, None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(vec * w[:, :, None], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None] * stride_o + offs_d[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & mask_d[None, :])


@triton.jit
def _gather_rowdot_kernel(
    idx_ptr,
    g_ptr,
    t_ptr,
    out_ptr,
    B,
    K,
    D,
    stride_idx,
    stride_g,
    stride_t,
    stride_o,
    ROWS: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    offs_j = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_j = row_ok[:, None] & (offs_j < K)[None, :]
    ids = tl.load(idx_ptr + rows[:, None] * stride_idx + offs_j[None, :], mask=mask_j, other=0)
    ids = ids.to(tl.int64)
    acc = tl.zeros((ROWS, BLOCK_J), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        g = tl.load(
            g_ptr + rows[:, None] * stride_g + offs_d[None, :],
            mask=row_ok[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)
        vec = tl.load(
            t_ptr + ids[:, :, None] * stride_t + offs_d[None, None, :],
            mask=mask_j[:, :, None] & mask_d[None, None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(vec * g[:, None, :], axis=2)
    tl.store(out_ptr + rows[:, None] * stride_o + offs_j[None, :], acc, mask=mask_j)


@triton.jit
def _segment_matmul_kernel(
    lat_ptr,
    rows_ptr,
    w_ptr,
    starts_ptr,
    y_ptr,
    out_ptr,
    L,
    D,
    stride_y,
    stride_ol,
    stride_od,
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    l0 = tl.program_id(0) * BLOCK_L
    offs_l = l0 + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    e_begin = tl.load(starts_ptr + l0)
    e_end = tl.load(starts_ptr + tl.minimum(l0 + BLOCK_L, L))
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    for e0 in range(e_begin, e_end, BLOCK_E):
        offs_e = e0 + tl.arange(0, BLOCK_E)
        mask_e = offs_e < e_end
        lat = tl.load(lat_ptr + offs_e, mask=mask_e, other=-1)
        rows = tl.load(rows_ptr + offs_e, mask=mask_e, other=0).to(tl.int64)
        w = tl.load(w_ptr + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        onehot = tl.where(offs_l[:, None] == lat[None, :], w[None, :], 0.0)
        y = tl.load(
            y_ptr + rows[:, None] * stride_y + offs_d[None, :],
            mask=mask_e[:, None] & mask_d[None, :],
            other=0.0,
        )
        acc = mma(onehot.to(DOT_DTYPE), y.to(DOT_DTYPE), acc, PRECISION, UPCAST)
    out = out_ptr + offs_l[:, None].to(tl.int64) * stride_ol + offs_d[None, :] * stride_od
    tl.store(out, acc, mask=(offs_l[:, None] < L) & mask_d[None, :])


def _check_table(table: torch.Tensor) -> None:
    if table.stride(1) != 1:
        raise ValueError("table rows must be contiguous (stride(1) == 1)")


def gather_matmul(
    idx: torch.Tensor,
    w: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[B, D]: sum_j w[b, j] * table[idx[b, j]] + bias, accumulated in fp32."""
    _check_table(table)
    B, K = idx.shape
    D = table.shape[1]
    out = torch.empty((B, D), dtype=out_dtype, device=table.device)
    if B == 0 or D == 0:
        return out
    rows = _GATHER["ROWS"]
    bd = min(_GATHER["BLOCK_D"], triton.next_power_of_2(D))
    _gather_matmul_kernel[(triton.cdiv(B, rows), triton.cdiv(D, bd))](
        idx,
        w,
        table,
        bias if bias is not None else table,
        out,
        B,
        K,
        D,
        idx.stride(0),
        w.stride(0),
        table.stride(0),
        out.stride(0),
        HAS_BIAS=bias is not None,
        ROWS=rows,
        BLOCK_J=_GATHER["BLOCK_J"],
        BLOCK_D=bd,
    )
    return out


def gather_rowdot(idx: torch.Tensor, g: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """fp32 [B, k]: g[b] . table[idx[b, j]]."""
    _check_table(table)
    if g.stride(1) != 1:
        g = g.contiguous()
    B, K = idx.shape
    D = table.shape[1]
    out = torch.empty((B, K), dtype=torch.float32, device=table.device)
    if B == 0 or K == 0:
        return out
    rows, bj = _GATHER["ROWS"], _GATHER["BLOCK_J"]
    bd = min(_GATHER["BLOCK_D"], triton.next_power_of_2(D))
    _gather_rowdot_kernel[(triton.cdiv(B, rows), triton.cdiv(K, bj))](
        idx,
        g,
        table,
        out,
        B,
        K,
        D,
        idx.stride(0),
        g.stride(0),
        table.stride(0),
        out.stride(0),
        ROWS=rows,
        BLOCK_J=bj,
        BLOCK_D=bd,
    )
    return out


def segment_matmul(
    idx: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor,
    dot_dtype: torch.dtype,
) -> torch.Tensor:
    """Fill out [L, D] (any strides) with sum over (b, j: idx[b, j] == l) of w[b, j] * y[b].

    Products run in `dot_dtype` (bf16 under autocast) with fp32 accumulation.
    """
    if y.stride(1) != 1:
        y = y.contiguous()
    L, D = out.shape
    seg = segments_by_latent(idx, L)
    w_sorted = w.reshape(-1)[seg.order]
    cfg = _SEGMENT
    bd = min(cfg["BLOCK_D"], max(16, triton.next_power_of_2(D)))
    grid = (triton.cdiv(L, cfg["BLOCK_L"]), triton.cdiv(D, bd))
    _segment_matmul_kernel[grid](
        seg.latents,
        seg.rows,
        w_sorted,
        seg.starts,
        y,
        out,
        L,
        D,
        y.stride(0),
        out.stride(0),
        out.stride(1),
        DOT_DTYPE=tl_dtype(dot_dtype),
        PRECISION=dot_precision(dot_dtype),
        UPCAST=UPCAST_DOT,
        BLOCK_L=cfg["BLOCK_L"],
        BLOCK_E=cfg["BLOCK_E"],
        BLOCK_D=bd,
    )
    return out
