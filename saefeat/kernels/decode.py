"""Sparse decoder: out[b] = sum_j vals[b, j] * W_dec[idx[b, j]] + b_dec.

W_dec [d_sae, d_in] is read in its own dtype (bf16 or fp32) and accumulated in fp32; the
output has the promoted dtype of vals and W_dec (fp32 for fp32 master weights). Backward:
grad vals[b, j] = grad_out[b] . W_dec[idx[b, j]] (a row gather), grad W_dec by segment sums
over latent-sorted entries (no dense [B, d_sae]), grad b_dec = grad_out.sum(0).
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import dense_cpu
from .dispatch import compute_dtype, ops_for, param_dtype


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, vals, W_dec, b_dec, ops: ModuleType, cdtype):  # type: ignore[override]
        w = W_dec.detach()
        if w.stride(1) != 1:
            w = w.contiguous()
        b = b_dec.detach() if b_dec is not None else None
        out = ops.gather_matmul(idx, vals.detach(), w, b, param_dtype(vals, W_dec))
        ctx.save_for_backward(idx, vals, w)
        ctx.ops, ctx.cdtype = ops, cdtype
        ctx.w_meta = W_dec.detach()
        ctx.b_dtype = b_dec.dtype if b_dec is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        idx, vals, w = ctx.saved_tensors
        ops = ctx.ops
        g = grad_out if grad_out.stride(1) == 1 else grad_out.contiguous()
        grad_vals = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_vals = ops.gather_rowdot(idx, g, w).to(vals.dtype)
        if ctx.needs_input_grad[2]:
            grad_w = torch.empty_like(ctx.w_meta)
            ops.segment_matmul(idx, vals.detach(), g, grad_w, ctx.cdtype)
        if ctx.needs_input_grad[3]:
            grad_b = g.sum(0, dtype=torch.float32).to(ctx.b_dtype)
        return None, grad_vals, grad_w, grad_b, None, None


def sparse_decode(
    idx: torch.Tensor, vals: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor | None
) -> torch.Tensor:
    """[B, d_in] = sum_j vals[b, j] * W_dec[idx[b, j]] + b_dec (b_dec may be None)."""
    if idx.dim() != 2 or idx.shape != vals.shape:
        raise ValueError(
            f"idx and vals must both be [B, k]; got {tuple(idx.shape)} and {tuple(vals.shape)}"
        )
    if W_dec.dim() != 2 or (b_dec is not None and b_dec.shape != (W_dec.shape[1],)):
        raise ValueError(
            f"expected W_dec [d_sae, d_in] and b_dec [d_in]; got "
            f"{tuple(W_dec.shape)}, {None if b_dec is None else tuple(b_dec.shape)}"
        )
    if idx.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"idx must be int64 or int32, got {idx.dtype}")
    if dense_cpu.wanted(idx, vals, W_dec, b_dec):
        return dense_cpu.sparse_decode(idx, vals, W_dec, b_dec)
    ops = ops_for(idx, vals, W_dec, b_dec)
    cdtype = compute_dtype(vals, W_dec)
    return _SparseDecode.apply(idx.contiguous(), vals.contiguous(), W_dec, b_dec, ops, cdtype)
