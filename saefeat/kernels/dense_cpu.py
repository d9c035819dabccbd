"""The CPU production path: dense GEMMs through torch autograd.

On a CPU with AMX/AVX512 a dense bf16 GEMM over [B, d_sae] beats the sparse gathers and
segment sums the GPU kernels use (27 ms vs ~380 ms for a training step at d_in=576,
d_sae=4608, B=256 on this project's 2-core Xeon), so `SAEFEAT_KERNELS=auto` on CPU
tensors runs these. `SAEFEAT_KERNELS=torch` still selects `reference.py`, the sparse
twin of the Triton kernels that the tests hold them against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import param_dtype, requested_backend


def wanted(*tensors: torch.Tensor | None) -> bool:
    present = [t for t in tensors if t is not None]
    return requested_backend() == "auto" and all(t.device.type == "cpu" for t in present)


def topk_encode(x, W_enc, b_enc, k):
    pre = F.relu(x @ W_enc + b_enc)
    vals, idx = pre.topk(k, dim=1, sorted=False)
    return vals.to(param_dtype(x, W_enc)), idx


def batch_topk_encode(x, W_enc, b_enc, k):
    pre = F.relu(x @ W_enc + b_enc)
    B, d_sae = pre.shape
    flat = pre.flatten()
    top = flat.topk(min(B * k, flat.numel()), sorted=False)
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(0, top.indices, True)
    acts = torch.where(keep.view(B, d_sae) & (pre > 0), pre, pre.new_zeros(()))
    k_max = max(1, int((acts > 0).sum(1).max()))
    vals, idx = acts.topk(k_max, dim=1)
    return vals.to(param_dtype(x, W_enc)), idx


def sparse_decode(idx, vals, W_dec, b_dec):
    # embedding_bag reads W_dec in the autocast dtype's place: cast explicitly so bf16
    # weights from autocast meet fp32 per-sample weights only in fp32.
    out = F.embedding_bag(idx, W_dec, per_sample_weights=vals.to(W_dec.dtype), mode="sum")
    return out if b_dec is None else out + b_dec
