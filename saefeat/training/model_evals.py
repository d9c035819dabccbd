"""Model-in-the-loop metrics: the SAE's reconstruction spliced into the forward pass.

CE loss and KL divergence (to the clean run's next-token distribution) with the hook's
output replaced by the SAE reconstruction, and by zeros (zero ablation). CE loss
recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), SAELens's definition; KL score =
(KL_zero - KL_sae) / KL_zero. Position 0 is left as is in every run: the SAE never trains
on it (its attention-sink residual has a norm tens of times the rest; see the reader).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from saefeat.lm import LanguageModel, parse_hook
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
    point = parse_hook(hook)
    module = lm.module_for(point)
    if point.kind == "resid_pre":

        def pre_hook(mod, args, kwargs):
            if args:
                return (_splice(args[0], replace), *args[1:]), kwargs
            return args, kwargs | {"hidden_states": _splice(kwargs["hidden_states"], replace)}

        handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
    else:

        def post_hook(mod, args, output):
            if isinstance(output, tuple):
                return (_splice(output[0], replace), *output[1:])
            return _splice(output, replace)

        handle = module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


def _logits(lm: LanguageModel, tokens: torch.Tensor, hook: str, replace: Replace | None):
    with spliced(lm, hook, replace):
        return lm.model(input_ids=tokens.to(lm.device), use_cache=False).logits.float()


@torch.no_grad()
def spliced_metrics(
    sae: SparseAutoencoder, lm: LanguageModel, tokens: torch.Tensor, hook: str,
    *, batch_contexts: int = 4,
) -> dict[str, float]:  # fmt: skip
    """CE and KL with the SAE spliced in at `hook`, against clean and zero ablation, over
    `tokens` [n_contexts, ctx_len] (next-token loss on every position after the first)."""
    if not hasattr(lm.model, "get_output_embeddings") or lm.is_encoder:
        return {}
    device = sae.W_enc.device

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return sae(x.to(device, torch.float32)).x_hat.to(x.device)

    sums = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero": 0.0, "kl_sae": 0.0, "kl_zero": 0.0}
    n = 0
    for b in range(0, tokens.shape[0], batch_contexts):
        ids = tokens[b : b + batch_contexts].long()
        targets = ids[:, 1:].reshape(-1).to(lm.device)
        clean = _logits(lm, ids, hook, None)[:, :-1].flatten(0, 1)
        logp_clean = clean.log_softmax(-1)
        for name, replace in (("sae", reconstruct), ("zero", torch.zeros_like)):
            logits = _logits(lm, ids, hook, replace)[:, :-1].flatten(0, 1)
            logp = logits.log_softmax(-1)
            sums[f"ce_{name}"] += F.nll_loss(logp, targets, reduction="sum").item()
            kl = (logp_clean.exp() * (logp_clean - logp)).sum(-1)
            sums[f"kl_{name}"] += kl.sum().item()
        sums["ce_clean"] += F.nll_loss(logp_clean, targets, reduction="sum").item()
        n += targets.numel()
    m = {k: v / n for k, v in sums.items()}
    ce_gap = m["ce_zero"] - m["ce_clean"]
    return {
        "ce_loss_clean": m["ce_clean"],
        "ce_loss_with_sae": m["ce_sae"],
        "ce_loss_zero_ablation": m["ce_zero"],
        "ce_loss_recovered": (m["ce_zero"] - m["ce_sae"]) / ce_gap if ce_gap else float("nan"),
        "kl_div_with_sae": m["kl_sae"],
        "kl_div_zero_ablation": m["kl_zero"],
        "kl_div_score": (m["kl_zero"] - m["kl_sae"]) / m["kl_zero"] if m["kl_zero"] else 0.0,
        "ce_eval_tokens": n,
    }
