"""Contrastive features on the demo pair: human text vs SmolLM2-135M's own continuations.

Builds the pair (saefeat.analysis.contrast_demo: paragraphs of the built-in corpus; the
human side is each paragraph after its first 16 tokens, the generated side the model's
sampled continuation of those 16 tokens, cached as JSONL under bench/contrast-data/),
harvests both at the demo's hook, trains an SAE on the human set as `saefeat demo` does,
then measures in one run:
  (a) the SAE forward alone over both sets (encoded_batches over every committed shard,
      in this process), the baseline;
  (b) the whole contrast (run_contrast: checks, Ray tasks running the SAE and counting
      per document, statistics, classifier).
contrast_ratio_vs_sae_forward = (a) / (b) (target >= 0.5: the statistics cost at most as
much as the SAE forward), from the second (warm) contrast; the first (cold) one, which
starts Ray's worker processes, is reported beside it. auroc_top32_features is the
held-out AUROC of the classifier on the top 32 features (target >= 0.9).

    python bench/contrast.py --prompts 787 --new-tokens 64 --tokens 50000   # the issue's size
    python bench/contrast.py --prompts 120 --new-tokens 16 --tokens 4096    # a loaded CPU
    python bench/contrast.py --smoke    # 32 prompts x 32 new tokens, 1,024-token sets, in a
                                        # temporary folder: a crash check

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch  # noqa: E402

DATA = Path(__file__).parent / "contrast-data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=787, help="paragraph prompts (787 exist)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    ap.add_argument("--tokens", type=int, default=50_000, help="token budget of each set")
    ap.add_argument("--ctx-len", type=int, default=64)
    ap.add_argument("--epochs", type=float, default=4.0, help="SAE training epochs")
    ap.add_argument("--lr", type=float, default=3e-4, help="SAE learning rate")
    ap.add_argument("--smoke", action="store_true",
                    help="a crash check: a small pair, generated in the home")  # fmt: skip
    args = ap.parse_args()
    os.environ.setdefault("SAEFEAT_HOME", tempfile.mkdtemp(prefix="saefeat-bench-contrast-"))
    os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache" / "saefeat" / "models"))
    data = DATA
    if args.smoke:  # generated afresh (seconds), and never into the checkout
        args.prompts, args.new_tokens, args.tokens, args.epochs = 32, 32, 1024, 1.0
        data = Path(os.environ["SAEFEAT_HOME"]) / "contrast-data"
    # The pair is written under `data` (bench/contrast-data/), so that is the corpus root
    # harvests read.
    os.environ.setdefault("SAEFEAT_CORPUS_ROOTS", str(data))

    from saefeat.analysis.contrast_demo import write_demo_corpora
    from saefeat.config import get_settings
    from saefeat.demo import demo_specs
    from saefeat.lm import EMBEDDED_MODEL
    from saefeat.pipeline import run_harvest, run_train
    from saefeat.sae import load_sae
    from saefeat.specs import ContrastSpec
    from saefeat.workers.contrast import run_contrast
    from saefeat.workers.index import encoded_batches
    from saefeat.workers.runtime import ensure_ray

    settings = get_settings()
    t = time.perf_counter()
    folder = data / f"p{args.prompts}-g{args.new_tokens}"
    human, generated = write_demo_corpora(
        folder, model=EMBEDDED_MODEL, max_prompts=args.prompts,
        max_new_tokens=args.new_tokens, batch_size=64, seed=0,
        progress=lambda d, n: print(f"generated {d}/{n}", flush=True),
    )  # fmt: skip
    print(f"corpora ready in {time.perf_counter() - t:.0f}s", flush=True)

    base, train_spec = demo_specs(args.tokens)
    sets = []
    for corpus in (human, generated):
        spec = type(base)(
            **{**base.model_dump(), "corpus": [str(corpus)], "ctx_len": args.ctx_len,
               "token_budget": args.tokens, "contexts_per_shard": 16}
        )  # fmt: skip
        sets.append(run_harvest(spec, settings=settings))
    a, b = (r.activation_set for r in sets)
    # Batch 128: the token budget must not leave a 1-row last batch (the trainer's FVU
    # divides by that batch's own variance: inf), so the default budgets avoid that.
    update = {"epochs": args.epochs, "batch_size": 128, "lr": args.lr}
    if args.smoke:
        update |= {"expansion_factor": 1, "eval_ce_contexts": 0}
    train = type(train_spec(a.id))(**{**train_spec(a.id).model_dump(), **update})
    sae_id = run_train(train, settings=settings).sae_id
    ensure_ray(settings)

    # (a) the SAE forward alone over both sets
    sae = load_sae(settings.saes_dir / sae_id)
    t = time.perf_counter()
    with torch.inference_mode():
        for aset in (a, b):
            for shard in aset.committed_shards():
                for _ in encoded_batches(sae, aset, shard, 32, "cpu"):
                    pass
    forward_s = time.perf_counter() - t

    # (b) the whole contrast: once cold (Ray starts its worker processes, which import
    # torch and load the SAE), then again warm, as a running service would run it.
    spec = ContrastSpec(sae=sae_id, a=a.id, b=b.id)
    cold = run_contrast(spec, settings=settings)
    result = run_contrast(spec, settings=settings)
    st = result.stats
    print(
        f"A {st.n_tokens_a} tokens / {st.n_docs_a} documents, B {st.n_tokens_b} / "
        f"{st.n_docs_b}; significant: {len(st.ranked('a', 0.05, st.d_sae))} toward human, "
        f"{len(st.ranked('b', 0.05, st.d_sae))} toward generated",
        flush=True,
    )
    print(
        json.dumps(
            {
                "auroc_top32_features": result.classifier.auroc,
                "contrast_s": round(result.seconds, 3),
                "sae_forward_s": round(forward_s, 3),
                "contrast_ratio_vs_sae_forward": round(forward_s / result.seconds, 3),
                "contrast_pass_s": round(result.pass_seconds, 3),
                "contrast_cold_s": round(cold.seconds, 3),
                "tokens_a": st.n_tokens_a,
                "tokens_b": st.n_tokens_b,
                "docs_a": st.n_docs_a,
                "docs_b": st.n_docs_b,
                "classifier_test_docs": result.classifier.n_test,
            }
        )
    )


if __name__ == "__main__":
    main()
