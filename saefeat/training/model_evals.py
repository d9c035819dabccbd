"""Model-in-the-loop metrics: the SAE's reconstruction spliced into the forward pass.

CE loss and KL divergence (to the clean run's next-token distribution) with the hook's
output replaced by the SAE reconstruction, and by zeros (zero ablation). A transcoder
replaces the hook it writes (the MLP's output) by its prediction from the hook it reads
(the MLP's input, as this forward computed it), and the zero ablation zeroes the MLP. CE loss
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

# (rows at the read hook [n, d_in], rows at the written hook [n, d_out]) -> new written rows
Replace = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def zeros(read: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(written)


def _splice(read: torch.Tensor, written: torch.Tensor, replace: Replace) -> torch.Tensor:
    out = written.clone()
    rows_in = read[:, 1:].reshape(-1, read.shape[-1])
    rest = written[:, 1:]
    new = replace(rows_in, rest.reshape(-1, written.shape[-1]))
    out[:, 1:] = new.reshape(rest.shape).to(written.dtype)
    return out


@contextmanager
def spliced(
    lm: LanguageModel, hook: str | None, replace: Replace | None, hook_out: str | None = None
):
    """Within the block, the activations at `hook_out` (default: `hook`) are replaced
    (positions >= 1) by `replace` of this forward's activations at `hook`."""
    if replace is None or hook is None:
        yield
        return
    with lm.exclusive():  # the read hook's tensor belongs to this thread's forward
        seen: dict[str, torch.Tensor] = {}

        def keep(t: torch.Tensor) -> torch.Tensor:
            seen["x"] = t
            return t

        handles = []
        try:
            if hook_out is not None and hook_out != hook:
                handles.append(edit_at(lm, parse_hook(hook), keep))
            else:
                hook_out = hook

            def splice(t: torch.Tensor) -> torch.Tensor:
                if hook_out == hook:
                    return _splice(t, t, replace)
                if "x" not in seen:  # never encode the written hook as if it were read
                    raise RuntimeError(f"{hook} did not fire before {hook_out}")
                return _splice(seen.pop("x"), t, replace)

            handles.append(edit_at(lm, parse_hook(hook_out), splice))
            yield
        finally:
            for h in reversed(handles):
                h.remove()


Hooks = tuple[str, str]  # (read, written): the same hook twice for an SAE


def _logits(lm: LanguageModel, tokens: torch.Tensor, hooks: Hooks | None,
            replace: Replace | None):  # fmt: skip
    read, written = hooks or (None, None)
    with spliced(lm, read, replace, written):
        return lm.model(input_ids=tokens.to(lm.device), use_cache=False).logits.float()


def _reconstruct(sae: SparseAutoencoder) -> Replace:
    device = sae.W_enc.device

    def replace(read: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        return sae(read.to(device, torch.float32)).x_hat.to(written.device)

    return replace


def _sparing(replace: Replace, norm_limit: float) -> Replace:
    """`replace`, except on rows whose read-hook norm exceeds the limit (massive tokens:
    the token rule is the read hook's)."""
    if norm_limit == float("inf"):
        return replace

    def spare(read: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
        keep = (read.float().norm(dim=-1) > norm_limit)[:, None]
        return torch.where(keep, written, replace(read, written).to(written.dtype))

    return spare


def spliced_metrics(
    sae: SparseAutoencoder, lm: LanguageModel, tokens: torch.Tensor, hook: str,
    *, batch_contexts: int = 4, norm_limit: float = float("inf"),
) -> dict[str, float]:  # fmt: skip
    """CE and KL with the SAE spliced in at `hook`, against clean and zero ablation, over
    `tokens` [n_contexts, ctx_len] (next-token loss on every position after the first)."""
    return spliced_metrics_many([(sae, hook)], lm, tokens, batch_contexts=batch_contexts,
                                norm_limits=[norm_limit])[0]  # fmt: skip


@torch.no_grad()
def spliced_metrics_many(
    saes: list[tuple[SparseAutoencoder, str]], lm: LanguageModel, tokens: torch.Tensor,
    *, batch_contexts: int = 4, norm_limits: list[float] | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """spliced_metrics for several (SAE, hook it reads) pairs (a transcoder writes its
    cfg.hook_out), each sparing the rows its own read hook's `norm_limits` exclude (hooks
    differ in norm: ln2.hook_normalized ~3, hook_mlp_in ~100 on SmolLM2); the clean run
    and each zero-ablation run (by hooks and limit) are computed once and shared (the
    forwards dominate the cost)."""
    if lm.is_encoder or not saes:
        return [{} for _ in saes]
    limits = norm_limits or [float("inf")] * len(saes)
    # (read, written, limit) of each: the zero ablation depends on nothing else.
    ablations = [(h, sae.cfg.hook_out or h, lim)
                 for (sae, h), lim in zip(saes, limits, strict=True)]  # fmt: skip
    zeroed = list(dict.fromkeys(ablations))
    ce_sae, kl_sae = [0.0] * len(saes), [0.0] * len(saes)
    ce_zero, kl_zero = dict.fromkeys(zeroed, 0.0), dict.fromkeys(zeroed, 0.0)
    ce_clean, n = 0.0, 0
    for b in range(0, tokens.shape[0], batch_contexts):
        ids = tokens[b : b + batch_contexts].long()
        targets = ids[:, 1:].reshape(-1).to(lm.device)
        logp_clean = _logits(lm, ids, None, None)[:, :-1].flatten(0, 1).log_softmax(-1)
        for z in zeroed:
            ce, kl = _score(lm, ids, targets, logp_clean, z[:2], _sparing(zeros, z[2]))
            ce_zero[z] += ce
            kl_zero[z] += kl
        for i, ((sae, _), (read, written, lim)) in enumerate(zip(saes, ablations, strict=True)):
            ce, kl = _score(lm, ids, targets, logp_clean, (read, written),
                            _sparing(_reconstruct(sae), lim))  # fmt: skip
            ce_sae[i] += ce
            kl_sae[i] += kl
        ce_clean += F.nll_loss(logp_clean, targets, reduction="sum").item()
        n += targets.numel()
    return [_summary(ce_clean / n, ce_sae[i] / n, ce_zero[z] / n, kl_sae[i] / n,
                     kl_zero[z] / n, n) for i, z in enumerate(ablations)]  # fmt: skip


def _score(
    lm: LanguageModel, ids: torch.Tensor, targets: torch.Tensor, logp_clean: torch.Tensor,
    hooks: Hooks, replace: Replace,
) -> tuple[float, float]:  # fmt: skip
    """(summed CE, summed KL(clean || spliced)) of one spliced run."""
    logp = _logits(lm, ids, hooks, replace)[:, :-1].flatten(0, 1).log_softmax(-1)
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
