"""Encoder autograd functions: TopK, BatchTopK and JumpReLU.

Layouts
- topk_encode -> (vals, idx), both [B, k]: vals >= 0 are the relu'd pre-activations of the
  k largest latents of each row, in no particular order; idx int64. When a row has fewer
  than k positive pre-activations the rest are zeros at arbitrary (valid) latents.
- batch_topk_encode -> (vals, idx), both [B, k_max], padded: row b holds its latents among
  the batch's B*k largest relu'd pre-activations that are > 0, sorted by value descending,
  then zeros. k_max = max over rows of that count (at least 1), so it varies per batch and
  costs a host sync. Padding slots have vals == 0 and a valid idx (spread over latents so
  no single latent collects them), so (vals, idx) feeds sparse_decode as is.
- jumprelu_encode -> acts, dense [B, d_sae] in the compute dtype (bf16 under autocast):
  pre * (pre > threshold). With return_l0=True also l0 [B] (active latents per row), whose
  gradient reaches only the threshold (Gemma Scope's step-function STE).

The TopK/BatchTopK backward is sparse: with gp = grad_vals * (vals > 0),
dx = gp @ W_enc[:, idx].T by a row gather, dW_enc by segment sums over latent-sorted
entries, db_enc by index_add; nothing [B, d_sae] is built.
"""

from __future__ import annotations

from types import ModuleType

import torch

from . import dense_cpu
from .dispatch import compute_dtype, ops_for, param_dtype


def _encoder_weight(W_enc: torch.Tensor, dtype: torch.dtype, rows: bool, ops: ModuleType):
    """W_enc for the GEMM as a [d_sae, d_in] operand (any strides) in `dtype`.

    Contiguous latent rows (a transposing cast, one pass) when the backward must gather
    them for grad x; otherwise a plain cast viewed transposed is enough for the GEMM.
    """
    wt = W_enc.detach().t()
    if wt.dtype == dtype and (wt.is_contiguous() or not rows):
        return wt
    if rows:
        return ops.latent_rows(W_enc.detach(), dtype)
    return W_enc.detach().to(dtype).t()


def _check_encoder(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor) -> None:
    if x.dim() != 2 or W_enc.dim() != 2 or b_enc.dim() != 1:
        raise ValueError(
            f"expected x [B, d_in], W_enc [d_in, d_sae], b_enc [d_sae]; got {tuple(x.shape)}, "
            f"{tuple(W_enc.shape)}, {tuple(b_enc.shape)}"
        )
    if x.shape[1] != W_enc.shape[0] or W_enc.shape[1] != b_enc.shape[0]:
        raise ValueError(
            f"shapes do not chain: x {tuple(x.shape)}, W_enc {tuple(W_enc.shape)}, "
            f"b_enc {tuple(b_enc.shape)}"
        )


def _check_k(k: int, d_sae: int, name: str = "k") -> None:
    if not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"{name} must be an int in [1, d_sae={d_sae}], got {k!r}")


def padded_layout(
    vals: torch.Tensor,
    rows: torch.Tensor,
    latents: torch.Tensor,
    B: int,
    d_sae: int,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat selected entries -> the padded [B, k_max] layout documented above."""
    keep = vals > 0
    vals, rows, latents = vals[keep], rows[keep], latents[keep]
    # Rows ascending, values descending within a row.
    order = torch.sort(vals, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]
    vals, rows, latents = vals[order], rows[order], latents[order]
    counts = torch.bincount(rows, minlength=B)
    k_max = max(1, int(counts.max())) if B > 0 and rows.numel() > 0 else 1
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel(), device=rows.device) - starts[rows]
    out_vals = torch.zeros((B, k_max), dtype=out_dtype, device=vals.device)
    spread = torch.arange(B * k_max, device=vals.device).remainder_(d_sae).view(B, k_max)
    out_idx = spread.clone()
    out_vals[rows, slot] = vals.to(out_dtype)
    out_idx[rows, slot] = latents.to(torch.int64)
    return out_vals, out_idx


class _SparseEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, k, batch, ops: ModuleType, cdtype):  # type: ignore[override]
        x_c = x.detach().to(cdtype).contiguous()
        w_t = _encoder_weight(W_enc, cdtype, ctx.needs_input_grad[0], ops)
        out_dtype = param_dtype(x, W_enc, b_enc)
        b = b_enc.detach()
        if batch:
            flat = ops.batch_topk_select(x_c, w_t, b, k)
            vals, idx = padded_layout(*flat, x.shape[0], W_enc.shape[1], out_dtype)
        else:
            vals, idx = ops.encode_topk(x_c, w_t, b, k, out_dtype)
        ctx.mark_non_differentiable(idx)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(x_c if need_w else None, w_t if need_x else None, idx, vals)
        ctx.ops, ctx.cdtype = ops, cdtype
        ctx.x_dtype, ctx.b_dtype = x.dtype, b_enc.dtype
        ctx.w_meta = W_enc.detach()  # shape/strides/dtype for the gradient buffer only
        return vals, idx

    @staticmethod
    def backward(ctx, grad_vals, _grad_idx):  # type: ignore[override]
        x_c, w_t, idx, vals = ctx.saved_tensors
        ops = ctx.ops
        gp = torch.where(vals > 0, grad_vals.float(), 0.0).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = ops.gather_matmul(idx, gp, w_t, None, ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(ctx.w_meta)
            ops.segment_matmul(idx, gp, x_c, grad_w.t(), ctx.cdtype)
        if ctx.needs_input_grad[2]:
            d_sae = ctx.w_meta.shape[1]
            grad_b = torch.zeros(d_sae, dtype=torch.float32, device=gp.device)
            grad_b.index_add_(0, idx.reshape(-1), gp.reshape(-1))
            grad_b = grad_b.to(ctx.b_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


def topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """TopK encoder: (vals [B, k] >= 0, idx [B, k] int64) of relu(x @ W_enc + b_enc)."""
    _check_encoder(x, W_enc, b_enc)
    _check_k(k, W_enc.shape[1])
    if dense_cpu.wanted(x, W_enc, b_enc):
        return dense_cpu.topk_encode(x, W_enc, b_enc, k)
    ops = ops_for(x, W_enc, b_enc)
    return _SparseEncode.apply(x, W_enc, b_enc, k, False, ops, compute_dtype(x, W_enc))


def batch_topk_encode(
    x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchTopK encoder: the batch's B*k largest relu'd pre-activations, padded [B, k_max]."""
    _check_encoder(x, W_enc, b_enc)
    _check_k(k, W_enc.shape[1])
    if dense_cpu.wanted(x, W_enc, b_enc):
        return dense_cpu.batch_topk_encode(x, W_enc, b_enc, k)
    ops = ops_for(x, W_enc, b_enc)
    return _SparseEncode.apply(x, W_enc, b_enc, k, True, ops, compute_dtype(x, W_enc))


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, threshold, bandwidth, want_l0, ops, cdtype):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        x_c = x.detach().to(cdtype).contiguous()
        w_t = _encoder_weight(W_enc, cdtype, False, ops)
        acts, pre = ops.encode_jump(x_c, w_t, b_enc.detach(), threshold.detach())
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(x_c if need_w else None, w_t if need_x else None, pre, threshold)
        ctx.ops, ctx.bandwidth = ops, bandwidth
        ctx.dtypes = (x.dtype, W_enc.dtype, b_enc.dtype)
        if not want_l0:
            return acts
        l0 = (acts != 0).sum(dim=1, dtype=torch.float32).to(param_dtype(x, W_enc))
        return acts, l0

    @staticmethod
    def backward(ctx, grad_acts, grad_l0=None):  # type: ignore[override]
        x_c, w_t, pre, threshold = ctx.saved_tensors
        if grad_acts is None and grad_l0 is None:
            return (None,) * 8
        grad_pre, grad_th = ctx.ops.jump_backward(grad_acts, grad_l0, pre, threshold, ctx.bandwidth)
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        grad_x = grad_w = grad_b = None
        if grad_pre is not None:
            grad_pre = grad_pre.to(pre.dtype)
            if ctx.needs_input_grad[0]:
                grad_x = (grad_pre @ w_t).to(x_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = (x_c.t() @ grad_pre).to(w_dtype)
            if ctx.needs_input_grad[2]:
                grad_b = grad_pre.sum(0, dtype=torch.float32).to(b_dtype)
        grad_th = grad_th.to(threshold.dtype) if ctx.needs_input_grad[3] else None
        return grad_x, grad_w, grad_b, grad_th, None, None, None, None


def jumprelu_encode(
    x: torch.Tensor,
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    threshold: torch.Tensor,
    bandwidth: float,
    *,
    return_l0: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """JumpReLU encoder, dense acts [B, d_sae]; threshold gets the rectangle-kernel STE."""
    _check_encoder(x, W_enc, b_enc)
    if threshold.shape != b_enc.shape:
        raise ValueError(
            f"threshold must be [d_sae]={tuple(b_enc.shape)}, got {tuple(threshold.shape)}"
        )
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
    ops = ops_for(x, W_enc, b_enc, threshold)
    return _JumpReLU.apply(
        x, W_enc, b_enc, threshold, float(bandwidth), return_l0, ops, compute_dtype(x, W_enc)
    )
