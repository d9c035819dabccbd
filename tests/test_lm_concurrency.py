"""Issue 27: every path that runs the process's shared model, all at once from several
threads, gives what it gives alone. Hooks live on the model's modules, so without one
lock per model a hook of one thread fires in another's forward ("hooks never fired: ..."
when its `_StopForward` ends the wrong forward, or activations edited or taken from the
wrong request)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from saefeat.analysis.steer import FeatureStrength, SteerRequest, steer, steer_for_sae
from saefeat.features import effects as E
from saefeat.features.live import features_for_sae
from saefeat.interp.patchscope import patchscope, reference_logprobs
from saefeat.interp.pool import build_pool
from saefeat.lm import cached_model, parse_hook, run_to_hooks
from saefeat.sae import SAEConfig
from saefeat.sae.topk import TopKSAE

HOOK = "blocks.2.hook_resid_post"  # the SAE's: one block still runs after it
HARVEST = ["blocks.1.hook_resid_pre", "blocks.1.hook_mlp_out", "blocks.2.hook_attn_out"]
THREADS = 6
ROUNDS = 3


class _Words:
    """A sentence encoder with no model: hashed characters, enough for a pool."""

    name = "chars"

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 16), np.float32)
        for row, text in enumerate(texts):
            for ch in text:
                out[row, ord(ch) % 16] += 1
        return out


@pytest.fixture(scope="module")
def shared(tiny_llama, tmp_path_factory):
    """The one cached model every path below uses, and a saved random SAE at HOOK."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sae") / "sae"
    sae = TopKSAE(SAEConfig(d_in=64, d_sae=96, k=8, hook=HOOK)).eval()
    sae.save(path)
    lm = cached_model(str(tiny_llama), None, "cpu")
    return lm, sae, str(path), str(tiny_llama)


def _calls(lm, sae, checkpoint: str, model: str) -> dict:
    """name -> a call of one real path on the shared model (each result comparable)."""
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    tokens = np.random.default_rng(0).integers(0, vocab, (12, 40))
    strings = [str(i) for i in range(vocab)]
    W_dec = sae.W_dec.detach()
    pairs = E.EffectPairs(np.array([0, 3, 5, 5]), np.array([1, 4, 7, 2]), np.array([5, 17, 30, 9]),
                          np.full(4, 2.0, np.float32))  # fmt: skip
    with torch.inference_mode():
        at_hook = run_to_hooks(lm, torch.from_numpy(tokens), [parse_hook(HOOK)])[HOOK].clone()
    from_set = lambda rows: at_hook[torch.from_numpy(rows)]  # noqa: E731 - as the set's
    directions = W_dec[:4] * 20
    reference = reference_logprobs(lm, HOOK, W_dec[10:18] * 5)
    harvest = torch.from_numpy(tokens[4:10]).long()

    def pool(first: int):
        p = build_pool(lm, sae, HOOK, tokens, np.arange(first, first + 4), _Words(),
                       window_tokens=16, batch_contexts=2)  # fmt: skip
        return p.texts, p.context_index, p.acts, p.embeddings

    def request(method: str, strength: float) -> SteerRequest:
        return SteerRequest("def add(a, b):", (FeatureStrength(5, strength),), method,
                            temperature=0.8, seed=7, max_new_tokens=6)  # fmt: skip

    # The API's call keeps the default continuation (DEFAULT_CACHE): made once here, so
    # every call below is a hit, alone or not; `steer` with no cache runs both rows.
    steer_for_sae(model, None, checkpoint, HOOK, request("add", 0.0), 6)

    return {
        "explain pool a": lambda: pool(0),
        "explain pool b": lambda: pool(6),
        "live encoding": lambda: features_for_sae(
            model, None, checkpoint, HOOK, "import sys\nprint(sys.version)", 5
        ),
        "steer add": lambda: steer_for_sae(model, None, checkpoint, HOOK, request("add", 40), 6),
        "steer clamp": lambda: steer_for_sae(
            model, None, checkpoint, HOOK, request("clamp", 8.0), 6
        ),
        "steer, default not kept": lambda: steer(
            lm, sae, HOOK, request("add", 40.0), max_new_tokens=6, cache=None
        ),
        "patchscope": lambda: patchscope(lm, HOOK, directions, reference=reference),
        "token change (edit)": lambda: E.measured_effects(
            lm, W_dec, HOOK, tokens, pairs, strings, n=5
        ),
        "token change (tail)": lambda: E.measured_effects(
            lm, W_dec, HOOK, tokens, pairs, strings, n=5, hook_acts=from_set
        ),
        "harvest batch": lambda: run_to_hooks(lm, harvest, [parse_hook(h) for h in HARVEST]),
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_every_path_on_a_shared_model_gives_alone_what_it_gives_together(shared):
    lm, sae, checkpoint, model = shared
    calls = _calls(lm, sae, checkpoint, model)
    # Alone: one at a time, on a worker thread as below (each thread its own OpenMP team).
    with ThreadPoolExecutor(1) as one:
        alone = {name: one.submit(call).result() for name, call in calls.items()}
    order = list(calls) * 2
    failures = []
    with ThreadPoolExecutor(THREADS) as pool:
        for r in range(ROUNDS):
            random.Random(r).shuffle(order)
            futures = [(name, pool.submit(calls[name])) for name in order]
            for name, future in futures:
                try:
                    if not _same(future.result(), alone[name]):
                        failures.append(f"round {r}: {name}: differs from the call alone")
                except Exception as e:  # noqa: BLE001 - reported with the others below
                    failures.append(f"round {r}: {name}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def _free_elsewhere(lock) -> bool:
    """Whether another thread could take `lock` now."""

    def take() -> bool:
        if lock.acquire(blocking=False):
            lock.release()
            return True
        return False

    with ThreadPoolExecutor(1) as other:
        return other.submit(take).result()


def test_one_lock_per_model_held_by_edits_and_shared_with_live_search(shared):
    lm, _, checkpoint, model = shared
    from saefeat.features import live
    from saefeat.lm import edit_at

    assert live.loaded(model, None, checkpoint)[2] is lm.exclusive()
    handle = edit_at(lm, parse_hook(HOOK), lambda t: t)
    try:
        assert not _free_elsewhere(lm.exclusive())  # the edit's forwards are its own
        ids = torch.zeros((1, 3), dtype=torch.long)
        with lm.exclusive():  # re-entrant: a holder runs capture inside
            acts = run_to_hooks(lm, ids, [parse_hook(HOOK)])
        assert acts[HOOK].shape == (1, 3, 64)
    finally:
        handle.remove()
    handle.remove()  # once only: a second remove lets nothing go
    assert _free_elsewhere(lm.exclusive())
