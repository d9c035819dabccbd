"""Triton row-wise top-k over relu'd pre-activations: block pruning + radix select.

The encoder GEMM also writes the max of every SEL_BLOCK-wide column block. A row's k-th
largest element is at least the k-th largest block maximum, so its top-k lies inside the
k blocks with the largest maxima: the selection reads k * SEL_BLOCK candidates per row
(8192 for k = 64) instead of d_sae (131072), which is where it beats torch.topk.

Within those candidates an exact radix select runs on the value bits. Relu'd floats are
non-negative, so their bit patterns order like the values: 8 bits per pass (2 passes for
bf16/fp16, 4 for fp32) find the k-th largest key T and how many keys equal to T to take;
a last pass writes every key > T and the first of the keys == T, in candidate order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import gemm
from .dispatch import interpreting

# Candidate blocks per loop iteration, rows per program. The interpreter pays per program
# and per op, not per element, so there a program takes many rows.
_BLOCKS_PER_ITER, _ROWS = (4, 16) if interpreting() else (16, 1)


@triton.jit
def _select_kernel(
    pre_ptr,
    blocks_ptr,
    vals_ptr,
    idx_ptr,
    B,
    N,
    n_blocks,
    k,
    stride_pre,
    stride_blk,
    stride_v,
    stride_i,
    KEY_BITS: tl.constexpr,
    SEL: tl.constexpr,
    BPI: tl.constexpr,
    ROWS: tl.constexpr,
):
    # ROWS rows per program, each with its own histogram (bins offset by 256 * local row).
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    local = tl.arange(0, ROWS)
    cols = tl.arange(0, SEL)
    bins = tl.arange(0, 256)

    # Radix passes: `prefix` holds the decided high bits of the k-th largest key,
    # `remaining` how many of the keys sharing that prefix still belong to the top-k.
    prefix = tl.zeros((ROWS,), dtype=tl.int32)
    remaining = tl.zeros((ROWS,), dtype=tl.int32) + k
    for p in tl.static_range(KEY_BITS // 8):
        shift = KEY_BITS - 8 * (p + 1)  # constexpr: p is a static_range index
        # Bin 2 * (256 * row + digit) + (not matching): every key lands in range, so this
        # needs no histogram mask (older triton has none); odd bins are dropped below.
        hist = tl.zeros((ROWS * 512,), dtype=tl.int32)
        for j0 in range(0, n_blocks, BPI):
            jo = j0 + tl.arange(0, BPI)
            jm = row_ok[:, None] & (jo < n_blocks)[None, :]
            blk = tl.load(blocks_ptr + rows[:, None] * stride_blk + jo[None, :], mask=jm, other=0)
            offs = blk.to(tl.int64)[:, :, None] * SEL + cols[None, None, :]
            valid = jm[:, :, None] & (offs < N)
            v = tl.load(pre_ptr + rows[:, None, None] * stride_pre + offs, mask=valid, other=0.0)
            if KEY_BITS == 16:
                key = v.to(tl.int16, bitcast=True).to(tl.int32)
            else:
                key = v.to(tl.int32, bitcast=True)
            match = valid
            if p > 0:
                match = valid & ((key >> (shift + 8)) == (prefix >> (shift + 8))[:, None, None])
            slot = 2 * (local[:, None, None] * 256 + ((key >> shift) & 255))
            slot += (~match).to(tl.int32)
            hist += tl.histogram(tl.reshape(slot, (ROWS * BPI * SEL,)), ROWS * 512)
        counts, _ = tl.split(tl.reshape(hist, (ROWS, 256, 2)))
        at_least = tl.cumsum(counts, 1, reverse=True)  # keys with digit >= d
        d = tl.sum((at_least >= remaining[:, None]).to(tl.int32), 1) - 1
        above = tl.sum(tl.where(bins[None, :] == d[:, None] + 1, at_least, 0), 1)  # digit > d
        remaining -= above
        prefix = prefix | (d << shift)

    # Write every key > T, then keys == T in candidate order until k are written.
    written = tl.zeros((ROWS,), dtype=tl.int32)
    ties_seen = tl.zeros((ROWS,), dtype=tl.int32)
    for j0 in range(0, n_blocks, BPI):
        jo = j0 + tl.arange(0, BPI)
        jm = row_ok[:, None] & (jo < n_blocks)[None, :]
        blk = tl.load(blocks_ptr + rows[:, None] * stride_blk + jo[None, :], mask=jm, other=0)
        offs3 = blk.to(tl.int64)[:, :, None] * SEL + cols[None, None, :]
        offs = tl.reshape(offs3, (ROWS, BPI * SEL))
        valid = tl.reshape(jm[:, :, None] & (offs3 < N), (ROWS, BPI * SEL))
        v = tl.load(pre_ptr + rows[:, None] * stride_pre + offs, mask=valid, other=0.0)
        if KEY_BITS == 16:
            key = v.to(tl.int16, bitcast=True).to(tl.int32)
        else:
            key = v.to(tl.int32, bitcast=True)
        tie = valid & (key == prefix[:, None])
        tie_rank = ties_seen[:, None] + tl.cumsum(tie.to(tl.int32), 1) - 1
        take = (valid & (key > prefix[:, None])) | (tie & (tie_rank < remaining[:, None]))
        pos = written[:, None] + tl.cumsum(take.to(tl.int32), 1) - 1
        tl.store(vals_ptr + rows[:, None] * stride_v + pos, v, mask=take)
        tl.store(idx_ptr + rows[:, None] * stride_i + pos, offs, mask=take)
        written += tl.sum(take.to(tl.int32), 1)
        ties_seen += tl.sum(tie.to(tl.int32), 1)


def candidate_blocks(bmax: torch.Tensor, k: int) -> torch.Tensor:
    """int32 [B, min(k, n_blocks)]: the blocks whose maxima are a row's k largest."""
    n_blocks = bmax.shape[1]
    if k >= n_blocks:
        ids = torch.arange(n_blocks, device=bmax.device, dtype=torch.int32)
        return ids.expand(bmax.shape[0], n_blocks)
    return torch.topk(bmax, k, dim=1, sorted=False).indices.to(torch.int32)


def select_topk(
    pre: torch.Tensor, bmax: torch.Tensor, k: int, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row of non-negative `pre` [B, N]; values in index-unsorted order."""
    B, N = pre.shape
    if not 1 <= k <= N:
        raise ValueError(f"k must be in [1, {N}], got {k}")
    blocks = candidate_blocks(bmax, k)
    vals = torch.empty((B, k), dtype=out_dtype, device=pre.device)
    idx = torch.empty((B, k), dtype=torch.int64, device=pre.device)
    key_bits = 8 * pre.element_size()
    if key_bits not in (16, 32):
        raise TypeError(f"pre-activations must be 16- or 32-bit floats, got {pre.dtype}")
    if B == 0:
        return vals, idx
    _select_kernel[(triton.cdiv(B, _ROWS),)](
        pre,
        blocks,
        vals,
        idx,
        B,
        N,
        blocks.shape[1],
        k,
        pre.stride(0),
        blocks.stride(0),
        vals.stride(0),
        idx.stride(0),
        KEY_BITS=key_bits,
        SEL=gemm.SEL_BLOCK,
        BPI=_BLOCKS_PER_ITER,
        ROWS=_ROWS,
        num_warps=8,
    )
    return vals, idx


def encode_topk(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor, k: int, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused GEMM + relu + block maxima, then the pruned radix select."""
    pre, bmax = gemm.encode_relu_blockmax(x_c, w_t, b)
    return select_topk(pre, bmax, k, out_dtype)


def batch_topk_select(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The B*k largest relu'd pre-activations of the batch, flat: (values, rows, latents).

    Each row's top-k' (k' = 2k at first) are candidates; the batch's top B*k is taken among
    them. That is exact once no row's k'-th candidate exceeds the smallest value taken
    (nothing left out of a row could have beaten it); otherwise k' doubles and the select
    reruns on the same pre-activations. Each check costs one host sync.
    """
    pre, bmax = gemm.encode_relu_blockmax(x_c, w_t, b)
    B, N = pre.shape
    kp = min(N, 2 * k)
    while True:
        cand_v, cand_i = select_topk(pre, bmax, kp, pre.dtype)
        vals, flat = torch.topk(cand_v.reshape(-1), B * k, sorted=False)
        if kp == N or bool((cand_v.amin(dim=1) <= vals.amin()).all()):
            break
        kp = min(N, 2 * kp)
    rows = torch.div(flat, kp, rounding_mode="floor")
    return vals, rows, cand_i.reshape(-1)[flat]
