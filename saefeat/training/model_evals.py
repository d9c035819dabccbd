"""Model-in-the-loop metrics: the SAE's reconstruction spliced into the forward pass.

CE loss and KL divergence (to the clean run's next-token distribution) with the hook's
output replaced by the SAE reconstruction, and by zeros (zero ablation). CE loss
recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), SAELens's definition; KL score =
(KL_zero - KL_sae) / KL_zero. The tokens the token rule excludes (position 0, and norms
above `norm_limit`; see storage/exclusion.py) are left as they are in every run: the SAE
never trains on them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from saefeat.lm import LanguageModel, edit_at, parse_hook
from saefeat.sae import SparseAutoencoder

Replace = Callable[[torch.Tensor], torch.Tensor]  # [n, d] -> [n, d]


def _splice(t: torch.Tensor, replace: Replace) -> torch.Tensor:
    out = t.clone()
    rest = t[:, 1:]
    out[:, 1:] = replace(rest.reshape(-1, t.shape[-1])).reshape(rest.shape).to(t.dtype)
    return out


@contextmanager
def spliced(lm: LanguageModel, hook: str, replace: Replace | None):
    """Within the block, the hook's activations are replaced (positions >= 1)."""
    if replace is None:
        yield
        return
    handle = edit_at(lm, parse_hook(hook), lambda t: _splice(t, replace))
    try:
        yield
    finally:
        handle.remove()


def _logits(lm: LanguageModel, tokens: torch.Tensor, hook: str | None, replace: Replace | None):
    with spliced(lm, hook, replace):
        return lm.model(input_ids=tokens.to(lm.device), use_cache=False).logits.float()


def _reconstruct(sae: SparseAutoencoder) -> Replace:
    device = sae.W_enc.device

    def replace(x: torch.Tensor) -> torch.Tensor:
        return sae(x.to(device, torch.float32)).x_hat.to(x.device)

    return replace


def _sparing(replace: Replace, norm_limit: float) -> Replace:
    """`replace`, except on rows whose norm exceeds the limit (massive tokens)."""
    if norm_limit == float("inf"):
        return replace

    def spare(x: torch.Tensor) -> torch.Tensor:
        keep = (x.float().norm(dim=-1) > norm_limit)[:, None]
        return torch.where(keep, x, replace(x).to(x.dtype))

    return spare


def spliced_metrics(
    sae: SparseAutoencoder, lm: LanguageModel, tokens: torch.Tensor, hook: str,
    *, batch_contexts: int = 4, norm_limit: float = float("inf"),
) -> dict[str, float]:  # fmt: skip
    """CE and KL with the SAE spliced in at `hook`, against clean and zero ablation, over
    `tokens` [n_contexts, ctx_len] (next-token loss on every position after the first)."""
    return spliced_metrics_many([(sae, hook)], lm, tokens, batch_contexts=batch_contexts,
                                norm_limit=norm_limit)[0]  # fmt: skip


@torch.no_grad()
def spliced_metrics_many(
    saes: list[tuple[SparseAutoencoder, str]], lm: LanguageModel, tokens: torch.Tensor,
    *, batch_contexts: int = 4, norm_limit: float = float("inf"),
) -> list[dict[str, float]]:  # fmt: skip
    """spliced_metrics for several (SAE, hook) pairs; the clean run and each hook's
    zero-ablation run are computed once and shared (the forwards dominate the cost)."""
    if lm.is_encoder or not saes:
        return [{} for _ in saes]
    hooks = list(dict.fromkeys(h for _, h in saes))
    ce_sae, kl_sae = [0.0] * len(saes), [0.0] * len(saes)
    ce_zero, kl_zero = dict.fromkeys(hooks, 0.0), dict.fromkeys(hooks, 0.0)
    ce_clean, n = 0.0, 0
    for b in range(0, tokens.shape[0], batch_contexts):
        ids = tokens[b : b + batch_contexts].long()
        targets = ids[:, 1:].reshape(-1).to(lm.device)
        logp_clean = _logits(lm, ids, None, None)[:, :-1].flatten(0, 1).log_softmax(-1)
        for h in hooks:
            ce, kl = _score(lm, ids, targets, logp_clean, h,
                            _sparing(torch.zeros_like, norm_limit))  # fmt: skip
            ce_zero[h] += ce
            kl_zero[h] += kl
        for i, (sae, h) in enumerate(saes):
            ce, kl = _score(lm, ids, targets, logp_clean, h,
                            _sparing(_reconstruct(sae), norm_limit))  # fmt: skip
            ce_sae[i] += ce
            kl_sae[i] += kl
        ce_clean += F.nll_loss(logp_clean, targets, reduction="sum").item()
        n += targets.numel()
    return [_summary(ce_clean / n, ce_sae[i] / n, ce_zero[h] / n, kl_sae[i] / n,
                     kl_zero[h] / n, n) for i, (_, h) in enumerate(saes)]  # fmt: skip


def _score(
    lm: LanguageModel, ids: torch.Tensor, targets: torch.Tensor, logp_clean: torch.Tensor,
    hook: str, replace: Replace,
) -> tuple[float, float]:  # fmt: skip
    """(summed CE, summed KL(clean || spliced)) of one spliced run."""
    logp = _logits(lm, ids, hook, replace)[:, :-1].flatten(0, 1).log_softmax(-1)
    kl = (logp_clean.exp() * (logp_clean - logp)).sum()
    return F.nll_loss(logp, targets, reduction="sum").item(), kl.item()


def _summary(clean: float, sae: float, zero: float, kl_sae: float, kl_zero: float,
             n: int) -> dict[str, float]:  # fmt: skip
    gap = zero - clean
    return {
        "ce_loss_clean": clean,
        "ce_loss_with_sae": sae,
        "ce_loss_zero_ablation": zero,
        "ce_loss_recovered": (zero - sae) / gap if gap else float("nan"),
        "kl_div_with_sae": kl_sae,
        "kl_div_zero_ablation": kl_zero,
        "kl_div_score": (kl_zero - kl_sae) / kl_zero if kl_zero else 0.0,
        "ce_eval_tokens": n,
    }
