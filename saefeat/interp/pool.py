"""The scoring pool: windows of the activation set's contexts, run once per job through
the subject model (up to the hook the SAE reads: a transcoder's input hook) and the
SAE, and embedded once. A crosscoder reads several models or layers at once: its pool
encodes the stored activations of its sources instead (`inputs`), the model giving only
the windows' text.

Scorers take their negatives ("random windows") and the activation scorer its retrieval
corpus from here, leaving out, per feature, the contexts its explanation was made from.
Which contexts make the pool is `scoring_contexts`: a seeded sample of all contexts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from saefeat.interp.encoder import SentenceEncoder
from saefeat.lm import LanguageModel, parse_hook, run_to_hooks
from saefeat.sae import SparseAutoencoder

WINDOW_TOKENS = 32  # a pool window: long enough to read, short enough to be about one thing


def scoring_contexts(aset, n_contexts: int, seed: int = 0) -> np.ndarray:
    """Context indices the pool is cut from: a seeded sample of all the set's contexts."""
    rng = np.random.default_rng(seed)
    take = min(n_contexts, aset.n_contexts)
    return np.sort(rng.choice(aset.n_contexts, size=take, replace=False))


@dataclass
class ScoringPool:
    texts: list[str]
    context_index: np.ndarray  # [n] the context each window is cut from
    acts: np.ndarray  # [n, d_sae] each feature's max activation over the window
    embeddings: np.ndarray  # [n, dim] unit length
    encoder_name: str

    def __len__(self) -> int:
        return len(self.texts)

    def usable(self, exclude_contexts: set[int]) -> np.ndarray:
        """Window ids whose context is not in `exclude_contexts`."""
        if not exclude_contexts:
            return np.arange(len(self))
        keep = ~np.isin(self.context_index, np.fromiter(exclude_contexts, dtype=np.int64))
        return np.nonzero(keep)[0]


@torch.inference_mode()
def build_pool(
    lm: LanguageModel,
    sae: SparseAutoencoder,
    hook: str,
    tokens: np.ndarray,
    contexts: np.ndarray,
    encoder: SentenceEncoder,
    *,
    window_tokens: int = WINDOW_TOKENS,
    batch_contexts: int = 16,
    inputs: Callable[[np.ndarray], torch.Tensor] | None = None,
) -> ScoringPool:
    """Cut `tokens[contexts]` into windows (position 0, the BOS/attention sink, left out),
    run model + SAE over the whole contexts, and keep each feature's max per window.
    `inputs(context ids)` [batch, ctx, d_in], when given, is what the SAE encodes instead
    of the model's activations at `hook` (a crosscoder's stored sources)."""
    ctx_len = tokens.shape[1]
    starts = list(range(1, ctx_len, window_tokens))
    point = parse_hook(hook)
    acts = np.zeros((len(contexts) * len(starts), sae.cfg.d_sae), np.float32)
    texts, owner = [], []
    decode = lm.tokenizer.decode  # type: ignore[attr-defined]
    for b in range(0, len(contexts), batch_contexts):
        ids = torch.from_numpy(tokens[contexts[b : b + batch_contexts]].astype(np.int64))
        if inputs is None:
            x = run_to_hooks(lm, ids, [point])[hook]  # [batch, ctx, d_in]
        else:
            x = inputs(contexts[b : b + batch_contexts])
        flat = x.reshape(-1, x.shape[-1]).to(sae.W_enc.dtype)
        dense = sae.dense_activations(flat).float().clamp(min=0).reshape(ids.shape[0], ctx_len, -1)
        for j, ctx in enumerate(contexts[b : b + batch_contexts]):
            for s in starts:
                row = len(texts)
                acts[row] = dense[j, s : s + window_tokens].amax(0).numpy()
                texts.append(decode(ids[j, s : s + window_tokens].tolist()))
                owner.append(int(ctx))
    return ScoringPool(
        texts=texts,
        context_index=np.asarray(owner, np.int64),
        acts=acts[: len(texts)],
        embeddings=encoder.encode(texts),
        encoder_name=encoder.name,
    )
