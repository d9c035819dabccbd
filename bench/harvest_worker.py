"""The per-worker harvest path on one device, against its baselines, on the same batches.

One process, no Ray: what one harvest actor does with its shards.
(a) the bare truncated forward (saefeat.lm.run_to_hooks, as the shard harvester calls it),
    tokens already on the device, outputs left there: the bar;
(b) a naive harvest: the full forward with output_hidden_states=True, then a blocking
    .cpu() of the hooked layer's hidden state;
(c) workers/shard.py's ShardHarvester over a temporary Zarr activation set holding the
    same tokens: forward to the deepest hook, NaN/Inf check, pinned-memory copies
    overlapped with the next batch (CUDA), the Zarr shard write, fsync and commit. Shards
    go through IN_FLIGHT threads as the Ray actor's concurrency does; the first IN_FLIGHT
    shards warm it up (pinned buffers) and are not timed. Its clock runs from the first
    timed forward to the last commit, so the last shard's write is never hidden (1 of
    the default 24 shards).
(w) the host half of (c) alone: write_shard (Zarr write, checksum, fsync, commit) of rows
    already in host memory, as many shards at once as (c). c/min(a, w) near 1 means (c)
    hides its copies and writes behind the forwards as far as the slower half allows; a
    low w is the set's file system (--root /dev/shm takes fsync out), not the GPU.
Correctness: (c)'s stored rows equal (a)'s outputs for the same batches, and (b)'s hidden
state equals (a)'s, within bf16 rounding; the committed shards pass their checksums.

The model is GPT-2-small-sized (12 layers, d 768, vocab 50257) with seeded random
weights, built here from a transformers GPT2Config (no model hub), or --model PATH.

    python bench/harvest_worker.py --device cpu --ctx-len 64 --batch 2 --batches 8  # CPU
    python bench/harvest_worker.py --smoke      # a 4-layer d-64 GPT-2 on the CPU: crash check
    python bench/harvest_worker.py --device cuda                                   # card

On CUDA it also counts the host syncs CUDA's sync debug mode sees in one forward and in
one shard (the harvester's one intended wait per shard, an event, is not counted).
On the CPU only correctness means something; the targets (c/a >= 0.85, c/b >= 2) are for
a GPU (on a loaded 2-core machine set OMP_NUM_THREADS=1, or OpenMP's spinning threads
swamp every number). Exit 1 when a correctness check fails. The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import saefeat  # noqa: E402

# An uninstalled checkout (a GPU machine with PYTHONPATH=.): map saefeat.workers and
# saefeat.storage onto workers/ and storage/, as pyproject's package-dir does.
if importlib.util.find_spec("saefeat.workers") is None:
    saefeat.__path__.append(str(ROOT))

from saefeat.lm import cached_model, parse_hook, run_to_hooks  # noqa: E402
from saefeat.specs import HarvestSpec  # noqa: E402
from saefeat.storage.activations import ActivationSet  # noqa: E402
from saefeat.workers.shard import IN_FLIGHT, ShardHarvester, model_dtype  # noqa: E402

TARGETS = {"harvest_c_over_a": 0.85, "harvest_c_over_b": 2.0}


def build_gpt2_small(
    path: Path, seed: int, n_positions: int, n_layer: int = 12, n_embd: int = 768
) -> Path:
    """A GPT-2-small-sized model (or smaller: the smoke run's) with seeded random weights
    and a one-token tokenizer (loading asks for one; the tokens here are drawn at random)."""
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=12 if n_embd % 12 == 0 else 4,
                     vocab_size=50257, n_positions=n_positions)  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(path)
    eos = "<|endoftext|>"
    tok = Tokenizer(models.WordLevel({eos: 0}, unk_token=eos))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos).save_pretrained(path)
    return path


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _host_syncs(fn) -> list[str]:
    """Where fn made the host wait for the GPU without being asked to (CUDA's sync debug
    mode; an Event.synchronize, the harvester's one intended wait per shard, is not one)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return [f"{Path(w.filename).name}:{w.lineno}" for w in seen if "synchroniz" in str(w.message)]


def _fs_type(path: Path) -> str:
    """The file system the set is written to (fsync costs differ by orders of magnitude)."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            mnt, fs = line.split()[1:3]
            if str(path.resolve()).startswith(mnt) and len(mnt) > len(best):
                best, kind = mnt, fs
    except OSError:
        pass
    return kind


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", help="a local model folder (default: random GPT-2 small)")
    ap.add_argument("--hook", default="blocks.8.hook_resid_post")
    ap.add_argument("--ctx-len", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=32, help="contexts per forward")
    ap.add_argument("--batches", type=int, default=96, help="timed batches")
    ap.add_argument("--shard-batches", type=int, default=4, help="batches per shard")
    ap.add_argument("--in-flight", type=int, default=IN_FLIGHT, help="shards at once")
    ap.add_argument("--root", help="where the temporary set goes (default: the temp dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true",
                    help="a crash check on the CPU: 4-layer d-64 GPT-2, hook blocks.2, "
                         "ctx 32, 4 batches of 2 in 2 shards")  # fmt: skip
    args = ap.parse_args()
    small = {}
    if args.smoke:
        args.device, args.hook, args.ctx_len = "cpu", "blocks.2.hook_resid_post", 32
        args.batch, args.batches, args.shard_batches = 2, 4, 2
        small = {"n_layer": 4, "n_embd": 64}
    if args.batches % args.shard_batches:
        ap.error("--batches must be a multiple of --shard-batches")
    device, hook = args.device, args.hook
    point = parse_hook(hook)
    if point.kind != "resid_post":
        ap.error("--hook must be a resid_post hook (the naive baseline reads hidden_states)")

    work = Path(tempfile.mkdtemp(prefix="saefeat-harvest-worker-", dir=args.root))
    try:
        model = args.model or str(
            build_gpt2_small(work / "gpt2-small", args.seed, max(1024, args.ctx_len), **small)
        )
        spec = HarvestSpec(
            model=model,
            hooks=[hook],
            ctx_len=args.ctx_len,
            contexts_per_shard=args.batch * args.shard_batches,
            batch_size=args.batch,
            storage_dtype="bfloat16",
        )
        dtype = model_dtype(spec, device)
        # the harvester gets this same copy
        lm = cached_model(spec.model, spec.revision, device, dtype)
        points = lm.check_hooks([hook])
        if point.layer + 1 >= lm.n_layers:  # the last hidden state has the final norm in it
            ap.error("--hook: the naive baseline needs a layer below the last")

        # The batches: IN_FLIGHT warm-up shards, then the timed ones; every variant runs
        # the timed batches and only those.
        g = torch.Generator().manual_seed(args.seed)
        n_warm = args.in_flight * args.shard_batches * args.batch
        n_ctx = n_warm + args.batches * args.batch
        vocab = int(lm.model.config.vocab_size)
        tokens = torch.randint(0, vocab, (n_ctx, args.ctx_len), generator=g, dtype=torch.int32)
        batches = list(tokens[n_warm:].long().split(args.batch))
        n_tokens = sum(b.numel() for b in batches)

        aset = ActivationSet.create(
            work / "set.zarr",
            set_id=spec.set_id(),
            spec=spec.model_dump(mode="json"),
            model=spec.model,
            hooks=[hook],
            d_model=lm.d_model,
            n_layers=lm.n_layers,
            tokens=tokens.numpy(),
            doc_index=np.zeros(n_ctx, dtype=np.int32),
            doc_offset=np.zeros(n_ctx, dtype=np.int32),
            doc_ids=["random"],
            contexts_per_shard=spec.contexts_per_shard,
            storage_dtype=spec.storage_dtype,
        )
        warm_shards = list(range(args.in_flight))
        timed_shards = list(range(args.in_flight, aset.n_shards))

        on_device = [b.to(device) for b in batches]
        _sync(device)

        def truncated() -> float:
            for x in on_device[:2]:
                run_to_hooks(lm, x, points)
            _sync(device)
            t0 = time.perf_counter()
            for x in on_device:
                run_to_hooks(lm, x, points)
            _sync(device)
            return n_tokens / (time.perf_counter() - t0)

        @torch.inference_mode()
        def naive_one(x: torch.Tensor) -> torch.Tensor:
            out = lm.model(input_ids=x.to(device), output_hidden_states=True, use_cache=False)
            return out.hidden_states[point.layer + 1].cpu()

        def naive() -> float:
            for x in batches[:2]:
                naive_one(x)
            t0 = time.perf_counter()
            for x in batches:
                naive_one(x)
            return n_tokens / (time.perf_counter() - t0)

        harvester = ShardHarvester(spec.model_dump_json(), str(aset.path), device)

        def shard_harvester() -> float:
            with ThreadPoolExecutor(args.in_flight) as pool:
                list(pool.map(harvester.harvest_shard, warm_shards))
                t0 = time.perf_counter()
                list(pool.map(harvester.harvest_shard, timed_shards))
                return n_tokens / (time.perf_counter() - t0)

        # Each variant runs in a worker thread, as (c)'s shards and a Ray actor's calls do
        # (a CPU's OpenMP threads behave differently in the main thread).
        with ThreadPoolExecutor(1) as one:
            a1 = one.submit(truncated).result()
            b = one.submit(naive).result()
            c = one.submit(shard_harvester).result()
            a2 = one.submit(truncated).result()
        a = (a1 + a2) / 2

        # Correctness on the first batch of the first and of the last timed shard.
        worst_c = worst_b = 0.0
        rows_per_batch = args.batch * args.ctx_len
        for s in (timed_shards[0], timed_shards[-1]):
            i = (s - args.in_flight) * args.shard_batches
            ref = run_to_hooks(lm, on_device[i], points)[hook].float().cpu().reshape(-1, lm.d_model)
            stored = aset.read_shard(s, hook, verify=True)[:rows_per_batch]
            scale = ref.abs().max().item()
            worst_c = max(worst_c, (stored - ref).abs().max().item() / scale)
            hs = naive_one(batches[i]).float().reshape(-1, lm.d_model)
            worst_b = max(worst_b, (hs - ref).abs().max().item() / scale)
        # bf16 keeps 8 significant bits: the same forward stored as bf16 is within 2^-8.
        tol = 2.0**-7
        checks = {
            "c_rows_equal_a": worst_c <= tol,
            "b_hidden_state_equals_a": worst_b <= tol,
            "all_shards_committed": aset.uncommitted_shards() == [],
            "checksums_ok": aset.verify() == [],
        }
        ok = all(checks.values())

        # (w) the host half alone: write_shard of rows already in host memory, as many at
        # once as (c) has; it rewrites the timed shards (after the checks), all with the
        # first one's rows. c / min(a, w) says how well (c) overlaps its two halves.
        first = {hook: aset.read_shard(timed_shards[0], hook).to(lm.model.dtype)}

        def write_only() -> float:
            with ThreadPoolExecutor(args.in_flight) as pool:
                t0 = time.perf_counter()
                list(pool.map(lambda s: aset.write_shard(s, first), timed_shards))
                return n_tokens / (time.perf_counter() - t0)

        w = write_only()

        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
        import transformers
        import zarr

        result = {
            "harvest_c_over_a": round(c / a, 3),
            "harvest_c_over_b": round(c / b, 3),
            "harvest_tok_s_a_truncated": round(a, 1),
            "harvest_tok_s_a_before_after": [round(a1, 1), round(a2, 1)],
            "harvest_tok_s_b_naive": round(b, 1),
            "harvest_tok_s_c_shard_harvester": round(c, 1),
            "harvest_tok_s_w_write_only": round(w, 1),
            "harvest_c_over_min_a_w": round(c / min(a, w), 3),
            "device": name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "zarr": zarr.__version__,
            "model": args.model or ("gpt2-tiny-random" if small else "gpt2-small-random"),
            "hook": hook,
            "model_dtype": str(dtype).removeprefix("torch."),
            "ctx_len": args.ctx_len,
            "batch": args.batch,
            "tokens_timed": n_tokens,
            "shards_timed": len(timed_shards),
            "in_flight": args.in_flight,
            "set_fs": _fs_type(aset.path),
            "set_dir": str(work),
            "max_rel_diff_c_vs_a": worst_c,
            "max_rel_diff_b_vs_a": worst_b,
            **checks,
        }
        if device.startswith("cuda"):  # after the timing: the debug mode costs time
            one = _host_syncs(lambda: run_to_hooks(lm, on_device[0], points))
            shard = _host_syncs(lambda: harvester.harvest_shard(timed_shards[0]))
            result["host_syncs_one_forward"] = len(one)
            result["host_syncs_one_shard"] = len(shard)
            result["host_sync_sites"] = sorted(set(one + shard))[:8]
            result["targets_met"] = all(result[k] >= v for k, v in TARGETS.items())
        shape = f"{n_tokens} tokens in {len(timed_shards)} shards, ctx {args.ctx_len}"
        print(f"device {name}, torch {torch.__version__}, {shape}, batch {args.batch}, {dtype}")
        print(f"(a) truncated forward      {a:14,.0f} tok/s  (before {a1:,.0f} / after {a2:,.0f})")
        print(f"(b) naive hidden states    {b:14,.0f} tok/s")
        print(f"(c) shard harvester + Zarr {c:14,.0f} tok/s")
        print(f"(w) write_shard alone      {w:14,.0f} tok/s  (set on {result['set_fs']})")
        print(f"c/a {c / a:.3f} (target >= 0.85)   c/b {c / b:.3f} (target >= 2)   "
              f"c/min(a, w) {c / min(a, w):.3f}")  # fmt: skip
        print("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))
        print(json.dumps(result))
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
