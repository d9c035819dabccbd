"""Which features fire on a piece of text: the text through the model (up to the SAE's
hook) and the SAE, then each token's strongest features.

The language model loads on first use and stays cached (saefeat.lm.cached_model); SAEs
are cached the same way, keyed by checkpoint path, so repeated queries cost one forward.

Forwards run on a `LivePool` of their own: a few threads and a short queue, refusing
more (503), so live text never takes the threads every other request is served on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from saefeat.errors import SaefeatError, SpecError
from saefeat.features.token_rule import excluded_tokens
from saefeat.lm import LanguageModel, cached_model, parse_hook, run_to_hooks
from saefeat.sae import SparseAutoencoder, load_sae

MAX_TEXT_CHARS = 4000
MAX_TEXT_TOKENS = 512
# Two concurrent first requests must not load a model twice. (One forward at a time on a
# model is the model's own lock, LanguageModel.exclusive: run_to_hooks takes it.)
_load_lock = threading.Lock()


class TextTooLongError(SaefeatError):
    status_code = 413


class LiveBusyError(SaefeatError):
    """Every live worker is busy and the queue is full: try again shortly (503)."""

    status_code = 503


class LivePool:
    """At most `workers` texts encoded at once and `queue` more waiting; past that,
    `submit` refuses at once instead of queueing without end."""

    def __init__(self, workers: int, queue: int):
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="live")
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        """Requests running or waiting."""
        return self._in_flight

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        if not self._slots.acquire(blocking=False):
            raise LiveBusyError(
                f"all {self.capacity} live search slots are taken; try again in a moment"
            )
        with self._count_lock:
            self._in_flight += 1
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._release)
        return future

    def _release(self, _: Future) -> None:
        with self._count_lock:
            self._in_flight -= 1
        self._slots.release()


@dataclass
class TokenFeatures:
    position: int
    token_id: int
    token: str
    features: list[tuple[int, float]]  # (feature index, activation), strongest first
    # Left out by the SAE's token rule (position 0, massive norm): no features reported.
    excluded: bool = False


@lru_cache(maxsize=4)
def cached_sae(checkpoint: str, device: str = "cpu") -> SparseAutoencoder:
    return load_sae(Path(checkpoint), device)


def check_text(text: str) -> None:
    if not text.strip():
        raise SpecError("must not be empty", field="text")
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLongError(
            f"has {len(text)} characters; live search takes at most {MAX_TEXT_CHARS}",
            field="text",
        )


@torch.inference_mode()
def features_on_text(
    lm: LanguageModel, sae: SparseAutoencoder, hook: str, text: str, top_n: int = 5
) -> list[TokenFeatures]:
    """Each token of `text` with its `top_n` strongest active features."""
    check_text(text)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids  # type: ignore[operator]
    if ids.shape[1] == 0:  # e.g. only control characters the tokenizer drops
        raise SpecError("has no tokens: the tokenizer drops every character of it", field="text")
    if ids.shape[1] > MAX_TEXT_TOKENS:
        raise TextTooLongError(
            f"is {ids.shape[1]} tokens long; live search takes at most {MAX_TEXT_TOKENS}",
            field="text",
        )
    acts = run_to_hooks(lm, ids, [parse_hook(hook)])[hook][0]  # [seq, d_in]
    vals, idx = sae.encode(acts.to(sae.W_enc.device, sae.W_enc.dtype))
    excluded = excluded_tokens(sae, acts).tolist()
    n = min(top_n, vals.shape[1])
    best, where = vals.topk(n, dim=1)
    features = idx.gather(1, where)
    out = []
    for pos, token_id in enumerate(ids[0].tolist()):
        pairs = [
            (int(f), float(v))
            for f, v in zip(features[pos].tolist(), best[pos].tolist(), strict=True)
            if v > 0
        ]
        token = lm.tokenizer.decode([token_id])  # type: ignore[attr-defined]
        out.append(TokenFeatures(pos, token_id, token, [] if excluded[pos] else pairs,
                                 excluded[pos]))  # fmt: skip
    return out


def features_for_sae(
    model_name: str, revision: str | None, checkpoint: str, hook: str, text: str, top_n: int = 5
) -> list[TokenFeatures]:
    """Load (once) the model at `revision` (the SAE's activation set's; see
    `set_registry.sae_model`) and the SAE named by a catalog row, and run
    `features_on_text`."""
    check_text(text)  # before paying for a model load
    lm, sae, _ = loaded(model_name, revision, checkpoint)
    return features_on_text(lm, sae, hook, text, top_n)  # run_to_hooks holds lm's lock


def loaded(
    model_name: str, revision: str | None, checkpoint: str
) -> tuple[LanguageModel, SparseAutoencoder, threading.RLock]:
    """The cached model (at `revision`) and SAE, and the model's own lock
    (`LanguageModel.exclusive`), for callers that run several forwards as one piece."""
    with _load_lock:
        lm = cached_model(model_name, revision, "cpu")
        sae = cached_sae(checkpoint, "cpu")
        return lm, sae, lm.exclusive()
