"""A real model diff (issue 24, item 4): do a crosscoder's B-only latents fire on the
domain model B was fine-tuned on?

Model A is SmolLM2-135M (saefeat's embedded `smollm2-135m`); model B is A fine-tuned on
software licence text by bench/finetune_domain.py (run first; it keeps B and the corpora
under bench/.cache/model-diff/, out of git). One paired harvest (HarvestSpec.
paired_model) reads A and B at the same residual hook on identical tokens of mixed.jsonl:
held-out licence paragraphs and held-out documentation, half and half by characters,
neither ever trained on. A BatchTopK crosscoder (saefeat's defaults but width and k) is
trained over the two sets; each latent's relative decoder norm ||d_B|| / (||d_A|| +
||d_B||) classes it a_only / shared / b_only (saefeat/sae/crosscoder.py, 0.1 / 0.9).

The measure: every latent that fired on at least MIN_CONTEXTS contexts gets its top
TOP_CONTEXTS contexts (the strongest activation in each, over the whole set); a latent is
a *domain latent* when at least DOMAIN_SHARE of them are licence documents. Reported: the
share of B-only latents that are domain latents, and the same share for shared latents
(and A-only), with the mean licence fraction of each class's top contexts. The corpus is
half licence text, so a class with no preference sits near the base rate
(`domain_token_share`).

    .venv/bin/python bench/model_diff.py [--tokens 300000] [--layer 20] [--d-sae 4608]
    .venv/bin/python bench/model_diff.py --smoke   # two tiny random Llamas, seconds

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "model-diff"
os.environ.setdefault("SAEFEAT_HOME", str(CACHE / "home"))
os.environ.setdefault("SAEFEAT_CORPUS_ROOTS", str(CACHE))  # mixed.jsonl lives there
os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache" / "saefeat" / "models"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from saefeat.config import get_settings  # noqa: E402
from saefeat.lm import EMBEDDED_MODEL  # noqa: E402
from saefeat.pipeline import run_harvest, run_train  # noqa: E402
from saefeat.sae.crosscoder import (  # noqa: E402
    decoder_norms,
    in_training_units,
    relative_norm,
    sharing,
    source_scales,
)
from saefeat.specs import HarvestSpec, TrainSpec  # noqa: E402
from saefeat.storage.catalog.db import upgrade  # noqa: E402

MIN_CONTEXTS = 5  # a latent must fire in this many contexts to be judged
TOP_CONTEXTS = 20  # its strongest contexts, one activation each
DOMAIN_SHARE = 0.8  # of which this share from licence documents: a domain latent


def log(msg: str) -> None:
    print(f"[model_diff] {msg}", file=sys.stderr, flush=True)


def model_b() -> Path:
    """bench/finetune_domain.py's model B (made now if missing: up to ~20 minutes)."""
    folder = CACHE / "model-b"
    if not (folder / "finetune.json").is_file():
        log("model B is missing: running bench/finetune_domain.py")
        subprocess.run([sys.executable, str(HERE / "finetune_domain.py")], check=True)
    return folder


def doc_domains(mixed: Path) -> dict[str, str]:
    """The harvest's document id of each line of mixed.jsonl -> its domain."""
    out = {}
    with mixed.open() as f:
        for lineno, line in enumerate(f, 1):
            out[f"{mixed.name}:{lineno}"] = json.loads(line)["domain"]
    return out


@torch.no_grad()
def top_contexts(sae, a, b, hook: str) -> tuple[np.ndarray, np.ndarray]:
    """Per latent: its TOP_CONTEXTS strongest contexts [d_sae, TOP] (-1: none) and how many
    contexts it fired in; one max per context, positions >= 1."""
    d_sae, n_ctx = sae.cfg.d_sae, a.n_contexts
    best = torch.zeros(n_ctx, d_sae)
    for shard in a.committed_shards():
        r0, r1 = a.shard_rows(shard)
        x = torch.cat([a.read_shard(shard, hook), b.read_shard(shard, hook)], 1)
        acts = sae.dense_activations(x.float()).reshape(-1, a.ctx_len, d_sae)
        acts[:, 0] = 0  # position 0 (BOS) is left out everywhere
        c0 = r0 // a.ctx_len
        best[c0 : c0 + acts.shape[0]] = acts.amax(1)
    fired = (best > 0).sum(0).numpy()
    vals, ctx = best.topk(min(TOP_CONTEXTS, n_ctx), dim=0)  # [TOP, d_sae]
    ctx[vals <= 0] = -1
    return ctx.T.numpy(), fired


def measure(sae, a, b, hook: str, domains: dict[str, str]) -> dict:
    doc_of = np.asarray(a.group["doc_index"][:])
    doc_ids = a.group.attrs["doc_ids"]
    is_domain = np.array([domains.get(d.split("/", 1)[-1]) == "domain" for d in doc_ids])
    ctx_domain = is_domain[doc_of]  # per context
    widths = sae.cfg.source_widths  # norms compared in training units (sae/crosscoder.py)
    W = in_training_units(sae.W_dec.detach(), widths, source_scales(sae.cfg))
    rel = relative_norm(decoder_norms(W, widths)).numpy()
    out_rel = {"relative_norm_quantiles_0_1_50_99_100": np.quantile(
        rel, [0, 0.01, 0.5, 0.99, 1]).round(4).tolist()}  # fmt: skip
    classes = np.array([sharing(float(r)) for r in rel])
    tops, fired = top_contexts(sae, a, b, hook)
    out: dict = {"domain_token_share": float(ctx_domain.mean()), **out_rel}
    for cls in ("b_only", "shared", "a_only"):
        judged = [i for i in np.flatnonzero(classes == cls) if fired[i] >= MIN_CONTEXTS]
        fractions = [float(ctx_domain[tops[i][tops[i] >= 0]].mean()) for i in judged]
        out[f"n_{cls}"] = int((classes == cls).sum())
        out[f"n_{cls}_judged"] = len(judged)
        out[f"domain_latent_share_{cls}"] = (
            float(np.mean([f >= DOMAIN_SHARE for f in fractions])) if fractions else None
        )
        out[f"mean_domain_fraction_{cls}"] = float(np.mean(fractions)) if fractions else None
    return out


def _drop_stale(settings, spec: HarvestSpec) -> None:
    """A set of model B made before B was last fine-tuned (same path, new weights) is
    stale: its id is the spec's, so the harvest would reuse it. Remove it."""
    made = CACHE / "model-b" / "finetune.json"
    folder = settings.activations_dir / f"{spec.sides()[1].set_id()}.zarr"
    if made.is_file() and folder.is_dir() and folder.stat().st_mtime < made.stat().st_mtime:
        log(f"model B changed since {folder.name} was harvested: harvesting it again")
        shutil.rmtree(folder)


def smoke_models(base: Path) -> tuple[str, str, Path]:
    """Two tiny random Llamas sharing a tokenizer, and a small mixed corpus."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from conftest import build_tiny_llama

    a, b = build_tiny_llama(base / "a", seed=0), build_tiny_llama(base / "b", seed=1)
    mixed = base / "mixed.jsonl"
    rows = [{"text": f"Permission is hereby granted, free of charge, {i} times.",
             "domain": "domain"} if i % 2 else
            {"text": f"The for statement iterates over the items {i} of a sequence.",
             "domain": "general"} for i in range(200)]  # fmt: skip
    mixed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(a), str(b), mixed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--layer", type=int, default=20)
    ap.add_argument("--d-sae", type=int, default=4608)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    if args.smoke:
        base = Path(tempfile.mkdtemp(prefix="saefeat-model-diff-smoke-"))
        settings = settings.model_copy(update={"corpus_roots": [base]})
        name_a, name_b, mixed = smoke_models(base)
        args.tokens, args.layer, args.d_sae, args.k = 4096, 1, 128, 4
        ctx_len, extra = 32, {"model_dtype": "float32"}
    else:
        name_a, name_b, mixed = EMBEDDED_MODEL, str(model_b()), CACHE / "mixed.jsonl"
        ctx_len, extra = 128, {}
    hook = f"blocks.{args.layer}.hook_resid_post"
    spec = HarvestSpec(model=name_a, paired_model=name_b, hooks=[hook], ctx_len=ctx_len,
                       token_budget=args.tokens, corpus=[str(mixed)], batch_size=16,
                       **extra)  # fmt: skip
    _drop_stale(settings, spec)
    log(f"paired harvest of {args.tokens:,} tokens at {hook}")
    result = run_harvest(spec, settings=settings)
    a, b = result.activation_set, result.paired.activation_set
    log(f"sets {a.id} (A) and {b.id} (B); training the crosscoder")
    train = run_train(TrainSpec(activation_set=a.id, sources=[{"hook": hook},
                                {"activation_set": b.id, "hook": hook}],
                                d_sae=args.d_sae, k=args.k), settings=settings)  # fmt: skip
    m = train.metrics
    log(f"crosscoder {train.sae_id}: FVU {m['fvu']:.4f} (A {m['fvu_by_source'][0]:.4f}, "
        f"B {m['fvu_by_source'][1]:.4f}), L0 {m['l0']:.1f}")  # fmt: skip
    out = measure(train.sae, a, b, hook, doc_domains(mixed))
    finetune = CACHE / "model-b" / "finetune.json"
    if args.smoke:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps({
        "sae": train.sae_id, "hook": hook, "tokens": a.n_tokens, "d_sae": args.d_sae,
        "k": args.k, "fvu_heldout": m["fvu"], "fvu_by_source": m["fvu_by_source"],
        **out,
        "finetune": json.loads(finetune.read_text()) if finetune.is_file() and
        not args.smoke else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
