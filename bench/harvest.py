"""Harvest throughput against its baselines, measured in one run on the same tokens.

(a) the bare forward truncated at the deepest hook (saefeat.lm.run_to_hooks), measured
    before and after (c) and averaged, since the machine may be shared;
(b) a naive harvest: the full forward with output_hidden_states=True, then a copy to host;
(c) saefeat's harvest (workers.harvest.harvest on a fresh SAEFEAT_HOME): Ray actors, the
    forward, NaN checks, Zarr writes, fsyncs and commit records. Its tok/s counts the
    time from the first shard sent to the last shard committed; Ray actor start-up and
    the model load (paid once per job) are reported apart, as are tokenization and the
    dask statistics after the last shard.
Also bytes per token on disk and the shuffled reader's tokens/s.

    python bench/harvest.py --quick      # SmolLM2-135M on this CPU, under 3 minutes
    python bench/harvest.py --smoke      # 1,024 tokens in 2 shards: a crash check

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from bench_home import fresh_home

# Ray starts each actor with OMP_NUM_THREADS set to its CPUs; give the in-process
# baselines the same OpenMP setting (it must be set before torch loads), or they are
# measured under a different threading regime than the harvest.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))

import torch  # noqa: E402


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _tok_s(fn, batches: list[torch.Tensor]) -> float:
    for b in batches[:2]:  # warm-up: first-call allocations, kernel selection, page-ins
        fn(b)
    t0 = time.perf_counter()
    for b in batches:
        fn(b)
    return sum(b.numel() for b in batches) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run on the embedded model")
    ap.add_argument("--smoke", action="store_true", help="a crash check: 8 contexts, 2 shards")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--hook", action="append", help="default: blocks.15.hook_resid_post")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--contexts", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shard-contexts", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    if args.quick:
        args.contexts, args.batch, args.shard_contexts = 128, 4, 32
    if args.smoke:
        args.contexts, args.batch, args.shard_contexts = 8, 4, 4
    hooks = args.hook or ["blocks.15.hook_resid_post"]

    fresh_home("harvest")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from saefeat.config import get_settings
    from saefeat.corpus import CorpusRoots
    from saefeat.lm import cached_model, parse_hook, run_to_hooks
    from saefeat.specs import HarvestSpec
    from saefeat.storage.reader import ShuffledBatchReader
    from saefeat.workers.harvest import harvest, prepare_set
    from saefeat.workers.runtime import ensure_ray
    from saefeat.workers.shard import model_dtype

    settings = get_settings()
    spec = HarvestSpec(
        model=args.model,
        hooks=hooks,
        ctx_len=args.ctx_len,
        token_budget=args.contexts * args.ctx_len,
        contexts_per_shard=args.shard_contexts,
        batch_size=args.batch,
        workers=args.workers,
    )
    t = time.perf_counter()
    roots = CorpusRoots.of(settings.corpus_root_paths)
    aset, _ = prepare_set(spec, settings.activations_dir, roots)  # tokenize + pack, once
    tokenize_s = time.perf_counter() - t
    dtype = model_dtype(spec, "cpu")
    lm = cached_model(spec.model, spec.revision, "cpu", dtype)
    points = [parse_hook(h) for h in hooks]
    layer = max(p.layer for p in points) + (1 if any(p.kind != "resid_pre" for p in points) else 0)
    tokens = torch.from_numpy(aset.tokens()).long()
    batches = list(tokens.split(args.batch))

    def truncated(x):
        return run_to_hooks(lm, x, points)

    @torch.inference_mode()
    def naive(x):
        out = lm.model(input_ids=x, output_hidden_states=True, use_cache=False)
        return out.hidden_states[layer].to("cpu", copy=True)

    # Start Ray first and let its daemons finish starting, so (a), (b) and (c) all run
    # beside the same idle Ray and (c) is not charged for Ray's own start-up.
    ensure_ray(settings)
    time.sleep(0 if args.smoke else 5)
    a1 = _tok_s(truncated, batches)
    b = _tok_s(naive, batches)
    result = harvest(spec, settings=settings)
    a2 = _tok_s(truncated, batches)
    a = (a1 + a2) / 2
    c = result.tokens_run / result.shard_seconds

    reader = ShuffledBatchReader(result.activation_set, hooks[0], 4096)
    t = time.perf_counter()
    n = sum(x.shape[0] for x in reader.iter_epoch(0))
    reader_tok_s = n / (time.perf_counter() - t)
    acts_bytes = _dir_bytes(result.activation_set.path / "acts")

    print(
        json.dumps(
            {
                "model": spec.model,
                "hooks": hooks,
                "model_dtype": str(dtype).removeprefix("torch."),
                "storage_dtype": spec.storage_dtype,
                "batch": args.batch,
                "ctx_len": args.ctx_len,
                "tokens": aset.n_tokens,
                "threads": torch.get_num_threads(),
                "tok_s_truncated_forward": round(a, 1),
                "tok_s_truncated_forward_before_after": [round(a1, 1), round(a2, 1)],
                "tok_s_naive": round(b, 1),
                "tok_s_saefeat": round(c, 1),
                "ratio_vs_truncated_forward": round(c / a, 3),
                "ratio_vs_naive": round(c / b, 3),
                "saefeat_startup_s": round(result.startup_seconds, 2),
                "saefeat_total_s": round(result.seconds, 2),
                "tokenize_s": round(tokenize_s, 2),
                "bytes_per_token": round(acts_bytes / aset.n_tokens, 1),
                "bytes_per_token_per_hook": round(acts_bytes / aset.n_tokens / len(hooks), 1),
                "reader_tok_s": round(reader_tok_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
