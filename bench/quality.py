"""SAE quality: saefeat's TopK trainer against sparsify's, same data, width, k and budget.

Harvests SmolLM2-135M's middle-layer residual stream on the built-in corpus (reused when
present), trains saefeat's TopK SAE (its defaults) and sparsify's SparseCoder the way
sparsify's trainer does (raw activations, b_dec at the first batch's mean, unit-norm
decoder with the parallel gradient removed, FVU loss, AuxK off, torch Adam at
2e-4 / sqrt(num_latents / 2^14) with linear warm-up and decay), on identical batches:
the training slice of the set with the token rule applied (no position 0, no token whose
norm exceeds 10x the median; storage/exclusion.py). sparsify's SAE goes through a real
export/import round trip (its own save_to_disk), then both are evaluated by the same code
on the held-out 5% of contexts that neither trained on: FVU on typical tokens (the
headline) and on all tokens but position 0, L0, dead fraction, and CE/KL spliced in.

    .venv/bin/python bench/quality.py [--quick | --smoke] [--tokens N] [--optimizer-state S]

`--smoke` is a crash check: 4,096 tokens, one epoch, an SAE as wide as the model, CE/KL
on 2 contexts (its numbers mean nothing).

`--optimizer-state bf16` trains saefeat with Adam's moments in bf16; `compare` trains
saefeat twice on identical batches (fp32 and bf16 moments), skips sparsify, and reports
both held-out FVUs and their ratio (CE/KL on 8 contexts). The last line is one JSON
object with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # eager decoder on the CPU
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Its own home (catalog, sets, SAEs) so it never touches a user's; the converted model is
# shared with the test suite's cache.
_CACHE = Path.home() / ".cache" / "saefeat"
os.environ.setdefault("SAEFEAT_HOME", str(_CACHE / "bench-quality"))
os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(_CACHE / "models"))

import torch  # noqa: E402

from saefeat.config import get_settings  # noqa: E402
from saefeat.lm import EMBEDDED_MODEL, load_model, model_config_and_tokenizer  # noqa: E402
from saefeat.pipeline import run_harvest  # noqa: E402
from saefeat.sae.interop import import_sparsify  # noqa: E402
from saefeat.specs import HarvestSpec, TrainSpec  # noqa: E402
from saefeat.storage.exclusion import excluded_rows, exclusion_report, rule_for_set  # noqa: E402
from saefeat.storage.reader import ShuffledBatchReader  # noqa: E402
from saefeat.training.evaluate import evaluate  # noqa: E402
from saefeat.training.model_evals import spliced_metrics_many  # noqa: E402
from saefeat.training.trainer import make_split, train_sae  # noqa: E402

SPARSIFY_WARMUP = 1000  # TrainConfig.lr_warmup_steps


def harvest(tokens: int) -> tuple:
    config, _ = model_config_and_tokenizer(EMBEDDED_MODEL)
    hook = f"blocks.{config.num_hidden_layers // 2}.hook_resid_post"
    spec = HarvestSpec(model=EMBEDDED_MODEL, hooks=[hook], ctx_len=128, token_budget=tokens,
                       batch_size=16)  # fmt: skip
    return run_harvest(spec).activation_set, hook


def train_sparsify(reader: ShuffledBatchReader, d_in: int, d_sae: int, k: int, steps: int):
    from sparsify.config import SparseCoderConfig
    from sparsify.sparse_coder import SparseCoder
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (d_sae / 2**14) ** 0.5)
    # sparsify warms up over 1000 steps of a run it assumes is long; a short run would
    # never reach the peak, so the warm-up is capped at a tenth of the run.
    sched = get_linear_schedule_with_warmup(opt, min(SPARSIFY_WARMUP, steps // 10), steps)
    step, epoch = 0, 0
    while step < steps:
        for x in reader.iter_epoch(epoch):
            if step >= steps:
                break
            if step == 0:
                sae.b_dec.data = x.mean(0)
            sae.set_decoder_norm_to_unit_norm()
            out = sae(x)
            out.fvu.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            opt.zero_grad()
            sched.step()
            step += 1
        epoch += 1
    sae.set_decoder_norm_to_unit_norm()
    return sae


def evaluate_both(saes: dict, aset, hook: str, split, rule, ce_contexts: int) -> dict:
    """Both SAEs by the same code on the held-out contexts: typical tokens, all tokens but
    position 0, and CE/KL with massive tokens left as they are."""
    lm = load_model(EMBEDDED_MODEL)
    tokens = torch.from_numpy(aset.tokens()[split.eval_context_ids()[:ce_contexts]]
                              .astype("int64"))  # fmt: skip
    spliced = spliced_metrics_many([(sae.eval(), hook) for sae in saes.values()], lm, tokens,
                                   norm_limits=[rule.norm_limit] * len(saes))  # fmt: skip
    out = {}
    for (name, sae), ce in zip(saes.items(), spliced, strict=True):
        held = [
            ShuffledBatchReader(aset, hook, 1024, seed=1, excluded=r, contexts=ctx)
            for r, ctx in (
                (excluded_rows(aset, hook, rule), split.eval_contexts),
                (None, split.eval_contexts),
            )
        ]
        typical = evaluate(sae, held[0].iter_epoch(0))
        every = evaluate(sae, held[1].iter_epoch(0))
        out[name] = typical | {"fvu_all_tokens": every["fvu"]} | ce
    return out


def compare_states(spec: TrainSpec, aset, hook: str, split, rule, t0: float, t_harvest: float):
    """saefeat with fp32 and with bf16 Adam moments, same batches, same evaluation."""
    saes, seconds = {}, {}
    for state in ("fp32", "bf16"):
        t = time.perf_counter()
        one = spec.model_copy(update={"optimizer_state": state, "name": f"bench-quality-{state}"})
        saes[f"saefeat-{state}"] = train_sae(one).sae
        seconds[state] = time.perf_counter() - t
    m = evaluate_both(saes, aset, hook, split, rule, 8)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}; "
          f"set {aset.id} ({aset.n_tokens} tokens at {hook}); d_sae={spec.d_sae} "
          f"k={spec.architecture.k} batch={spec.batch_size} epochs={spec.epochs}; harvest "
          f"{t_harvest:.0f}s, train fp32 {seconds['fp32']:.0f}s, bf16 {seconds['bf16']:.0f}s, "
          f"total {time.perf_counter() - t0:.0f}s")  # fmt: skip
    for name, v in m.items():
        print(f"{name:13s} fvu {v['fvu']:.4f} (all {v['fvu_all_tokens']:.4f})  l0 {v['l0']:.1f}  "
              f"dead {v['dead_frac']:.4f}  CE recovered {v['ce_loss_recovered']:.4f}")  # fmt: skip
    fp32, bf16 = m["saefeat-fp32"], m["saefeat-bf16"]
    print(json.dumps({"fvu_heldout_fp32_state": fp32["fvu"], "fvu_heldout_bf16_state": bf16["fvu"],
                      "fvu_ratio_bf16_to_fp32": bf16["fvu"] / fp32["fvu"],
                      "ce_recovered_fp32_state": fp32["ce_loss_recovered"],
                      "ce_recovered_bf16_state": bf16["ce_loss_recovered"]}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a CPU-sized run (< 10 minutes)")
    ap.add_argument("--smoke", action="store_true", help="a crash check (seconds)")
    ap.add_argument("--tokens", type=int, help="harvest this many tokens (default 200k)")
    ap.add_argument(
        "--optimizer-state",
        choices=["fp32", "bf16", "compare"],
        default="fp32",
        help="saefeat's Adam moments; compare: fp32 against bf16, no sparsify",
    )
    args = ap.parse_args()
    tokens, epochs, ce_contexts = (40_000, 2.0, 8) if args.quick else (200_000, 2.0, 64)
    expansion = 8
    if args.smoke:
        tokens, epochs, ce_contexts, expansion = 4096, 1.0, 2, 1
    tokens = args.tokens or tokens
    k, batch = 32, 256
    t0 = time.perf_counter()
    aset, hook = harvest(tokens)
    d_in = aset.d_model
    d_sae = expansion * d_in
    t_harvest = time.perf_counter() - t0

    state = "fp32" if args.optimizer_state == "compare" else args.optimizer_state
    spec = TrainSpec(activation_set=aset.id, hook=hook, d_sae=d_sae, k=k, batch_size=batch,
                     epochs=epochs, eval_ce_contexts=0, name=f"bench-quality-{state}",
                     optimizer_state=state)  # fmt: skip
    split = make_split(get_settings(), spec, aset, [hook])
    rule = rule_for_set(aset, hook, spec.massive_norm_threshold)
    if args.optimizer_state == "compare":
        compare_states(spec, aset, hook, split, rule, t0, t_harvest)
        return
    t1 = time.perf_counter()
    ours = train_sae(spec).sae
    t_ours = time.perf_counter() - t1

    # The same batches saefeat trained on: training contexts, token rule applied.
    reader = ShuffledBatchReader(aset, hook, batch, seed=spec.seed,
                                 excluded=excluded_rows(aset, hook, rule),
                                 contexts=split.train_contexts)  # fmt: skip
    steps = int(reader.batches_per_epoch * epochs)
    t2 = time.perf_counter()
    theirs = train_sparsify(reader, d_in, d_sae, k, steps)
    t_theirs = time.perf_counter() - t2
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_to_disk(Path(tmp) / "layer")
        theirs_ours = import_sparsify(Path(tmp) / "layer", model=EMBEDDED_MODEL, hook=hook)

    t3 = time.perf_counter()
    m = evaluate_both({"saefeat": ours, "sparsify": theirs_ours}, aset, hook, split, rule,
                      ce_contexts)  # fmt: skip
    t_eval = time.perf_counter() - t3
    excluded = exclusion_report(aset, hook, rule, split.eval_contexts)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}; "
          f"set {aset.id} ({aset.n_tokens} tokens at {hook}); d_sae={d_sae} k={k} "
          f"batch={batch} steps={steps} ({reader.rows_per_epoch} training rows); held out "
          f"{split.describe()['contexts']} contexts, {m['saefeat']['n_tokens']} typical "
          f"tokens; harvest {t_harvest:.0f}s, train saefeat {t_ours:.0f}s, sparsify "
          f"{t_theirs:.0f}s, eval {t_eval:.0f}s, total {time.perf_counter() - t0:.0f}s; "
          f"home {get_settings().home}")  # fmt: skip
    print(f"excluded on the held-out contexts: {excluded}")
    for name, v in m.items():
        print(f"{name:9s} fvu {v['fvu']:.4f} (all {v['fvu_all_tokens']:.4f})  l0 {v['l0']:.1f}  "
              f"dead {v['dead_frac']:.4f}  CE clean {v['ce_loss_clean']:.4f} sae "
              f"{v['ce_loss_with_sae']:.4f} zero {v['ce_loss_zero_ablation']:.4f}  recovered "
              f"{v['ce_loss_recovered']:.4f}  KL {v['kl_div_with_sae']:.4f}")  # fmt: skip
    print(json.dumps({
        "fvu_heldout_saefeat": m["saefeat"]["fvu"], "fvu_heldout_sparsify": m["sparsify"]["fvu"],
        "fvu_all_tokens_saefeat": m["saefeat"]["fvu_all_tokens"],
        "dead_frac_heldout_saefeat": m["saefeat"]["dead_frac"],
        "dead_frac_heldout_sparsify": m["sparsify"]["dead_frac"],
        "ce_recovered_saefeat": m["saefeat"]["ce_loss_recovered"],
        "ce_recovered_sparsify": m["sparsify"]["ce_loss_recovered"],
        "excluded_tokens": excluded["excluded"],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
