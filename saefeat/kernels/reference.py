"""Plain-torch twins of the Triton primitives (same signatures as triton_ops.py).

These run on CPU and wherever Triton is off. The encoder forward here does build the dense
[B, d_sae] pre-activations (torch.topk needs them); the backward twins stay sparse
(index_add / embedding_bag), like the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_rows(W_enc: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W_enc [d_in, d_sae] as contiguous rows [d_sae, d_in] in `dtype`."""
    out = torch.empty((W_enc.shape[1], W_enc.shape[0]), dtype=dtype, device=W_enc.device)
    return out.copy_(W_enc.t())


def encode_pre(x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x_c @ w_t.T + b: product in x_c's dtype, bias added in fp32, rounded once more."""
    prod = x_c @ w_t.t()
    return (prod.float() + b.float()).to(x_c.dtype)


def encode_topk(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor, k: int, out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = encode_pre(x_c, w_t, b).relu_()
    vals, idx = torch.topk(pre, k, dim=1, sorted=False)
    return vals.to(out_dtype), idx


def batch_topk_select(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The B*k largest relu'd pre-activations of the batch, flat: (values, rows, latents)."""
    pre = encode_pre(x_c, w_t, b).relu_()
    B, N = pre.shape
    vals, flat = torch.topk(pre.reshape(-1), B * k, sorted=False)
    rows = torch.div(flat, N, rounding_mode="floor")
    return vals, rows, flat - rows * N


def encode_jump(
    x_c: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor, threshold: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    pre = encode_pre(x_c, w_t, b)
    acts = torch.where(pre.float() > threshold.float(), pre, torch.zeros_like(pre))
    return acts, pre


def jump_backward(
    grad_acts: torch.Tensor | None,
    grad_l0: torch.Tensor | None,
    pre: torch.Tensor,
    threshold: torch.Tensor,
    bandwidth: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(fp32 grad_pre or None, fp32 grad_threshold) of JumpReLU with the rectangle-kernel STE.

    d acts / d pre = H(pre - t); d acts / d t = -(t / bw) * rect((pre - t) / bw);
    d l0 / d t = -(1 / bw) * rect((pre - t) / bw); rect(u) = 1 on (-1/2, 1/2).
    """
    p = pre.float()
    t = threshold.float()
    u = (p - t) / bandwidth
    rect = ((u > -0.5) & (u < 0.5)).float()
    g_t = torch.zeros_like(p)
    grad_pre = None
    if grad_acts is not None:
        g = grad_acts.float()
        grad_pre = g * (p > t)
        g_t = g_t - g * (t / bandwidth)
    if grad_l0 is not None:
        g_t = g_t - grad_l0.float()[:, None] / bandwidth
    return grad_pre, (g_t * rect).sum(0)


def gather_matmul(
    idx: torch.Tensor,
    w: torch.Tensor,
    table: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    out = F.embedding_bag(idx, table.float(), per_sample_weights=w.float(), mode="sum")
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


def gather_rowdot(idx: torch.Tensor, g: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    rows = F.embedding(idx, table.float())  # [B, k, D]
    return torch.bmm(rows, g.float().unsqueeze(2)).squeeze(2)


def segment_matmul(
    idx: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    out: torch.Tensor,
    dot_dtype: torch.dtype,
) -> torch.Tensor:
    k = idx.shape[1]
    rows = torch.arange(idx.shape[0], device=idx.device).repeat_interleave(k)
    y_c = y.to(dot_dtype).float()
    w_c = w.reshape(-1).to(dot_dtype).float()
    acc = torch.zeros(out.shape, dtype=torch.float32, device=out.device)
    acc.index_add_(0, idx.reshape(-1), y_c[rows] * w_c[:, None])
    out.copy_(acc)
    return out


STATE_DTYPES = (torch.float32, torch.bfloat16)


def stochastic_state(m: torch.Tensor, v: torch.Tensor | None = None) -> bool:
    """True for bf16 moments (stored stochastically rounded), False for fp32 ones."""
    for t in (m, v):
        if t is not None and t.dtype not in STATE_DTYPES:
            raise TypeError(f"Adam state must be float32 or bfloat16, got {t.dtype}")
    if v is not None and v.dtype != m.dtype:
        raise TypeError(f"Adam moments disagree in dtype: {m.dtype} and {v.dtype}")
    return m.dtype == torch.bfloat16


# The bit twiddling runs on int32 tensors, whose arithmetic wraps like the kernels' uint32;
# right shifts are masked to be logical.
def _hash(x: torch.Tensor) -> torch.Tensor:
    """uint32 -> uint32 mixing on int32 bit patterns (adam._hash is its Triton twin)."""
    x = (x ^ ((x >> 16) & 0xFFFF)) * 0x45D9F3B
    x = (x ^ ((x >> 16) & 0xFFFF)) * 0x45D9F3B
    return x ^ ((x >> 16) & 0xFFFF)


def _as_int32(v: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> the int32 with the same bits."""
    v = v & 0xFFFFFFFF
    return torch.where(v >= 2**31, v - 2**32, v).to(torch.int32)


def random_bits(shape: torch.Size, device: torch.device, step, salt: int) -> torch.Tensor:
    """32 random bits per element (int32), a hash of (row-major index, step, salt)."""
    count = step.long() if isinstance(step, torch.Tensor) else int(step)
    seed = _hash(_as_int32(torch.as_tensor(salt + count * 65599, device=device)))
    n = torch.Size(shape).numel()
    return _hash(torch.arange(n, device=device, dtype=torch.int32).view(shape) + seed)


def stochastic_bf16(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """fp32 x to bf16, rounded away from zero with probability of the dropped bits'
    fraction (r: 16 random bits per element); unbiased where round-to-nearest is not."""
    bits = (x.float().view(torch.int32) + r) & -65536  # keep the top 16 bits
    return bits.view(torch.float32).bfloat16()


def store_moments(m: torch.Tensor, v: torch.Tensor, m32, v32, step, salt: int) -> None:
    """fp32 moments into bf16 state, stochastically rounded (16 random bits each)."""
    r = random_bits(m.shape, m.device, step, salt)
    m.copy_(stochastic_bf16(m32, r & 0xFFFF))
    v.copy_(stochastic_bf16(v32, (r >> 16) & 0xFFFF))


@torch.no_grad()
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
    """Adam on p; m and v fp32 (updated in place) or bf16 (computed in fp32, stored
    stochastically rounded). hyper, a tensor [step_size, bias_correction2, step], replaces
    the three scalars (so nothing is read on the host)."""
    if hyper is not None:
        step_size, bias_correction2, step = hyper[0], hyper[1], hyper[2]
    g = g.float()
    if stochastic_state(m, v):
        m32 = m.float().mul_(beta1).add_(g, alpha=1 - beta1)
        v32 = v.float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
        store_moments(m, v, m32, v32, step, salt)
    else:
        m32 = m.mul_(beta1).add_(g, alpha=1 - beta1)
        v32 = v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v32.sqrt() / bias_correction2**0.5).add_(eps)
    p.copy_(p.float() - step_size * m32 / denom)


def remove_parallel(g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """g without its component along each row of w (exact for rows of any length)."""
    coef = (g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True).clamp_min(1e-30)
    return g - coef * w


def renormalise_rows_(p: torch.Tensor) -> None:
    p.div_(p.norm(dim=1, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
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
    """Adam on rows of p with the row-parallel gradient removed, then rows at unit norm."""
    g = remove_parallel(g.float(), p.float())
    adam_(p, g, m, v, step_size, bias_correction2, beta1, beta2, eps, step=step, salt=salt,
          hyper=hyper)  # fmt: skip
    renormalise_rows_(p)
