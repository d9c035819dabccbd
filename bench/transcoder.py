"""Transcoders: saefeat's TopK transcoder against sparsify's on identical activations, and
whether its features read better than an SAE's on the same layer.

Harvests SmolLM2-135M's middle layer on the built-in corpus (cached under
bench/.cache/transcoder, reused when present) at what its MLP reads
(`blocks.L.ln2.hook_normalized`) and writes (`blocks.L.hook_mlp_out`), row-aligned in one
set. Trains in one sweep (the same batches, the same rows of both hooks) saefeat's TopK
transcoder (its defaults: b_dec at the targets' geometric median, unit-mean-square inputs
and targets, Adam at 2e-4 / sqrt(d_sae / 2^14), AuxK) and a TopK SAE of the same width, k
and steps on `hook_mlp_out`; then sparsify's SparseCoder with `transcode=True` twice, the
way sparsify's trainer trains a transcoder (raw activations, W_dec at zero and never
normalised, b_enc centring the first batch's inputs, b_dec at its targets' mean, FVU loss
against the batch's own variance, AuxK off) with each of its optimizers: `adam` (torch
Adam at 2e-4 / sqrt(num_latents / 2^14), linear warm-up capped at a tenth of the run as
in bench/quality.py, linear decay) and its default `signum` (schedule-free SignSGD at
5e-3 / sqrt(num_latents / 2^14), momentum 0.95; its checkpoint holds the schedule-free
average). Identical batches: inputs and targets from two readers of the training
contexts with the same seed and the same excluded rows (the token rule of both hooks),
so row i of one is row i of the other. Each goes through sparsify's save_to_disk and
saefeat's `import_sparsify` (a `layers.L.mlp` folder: the hooks come from its name).

All transcoders are evaluated by the same code on the held-out 5% of contexts: FVU of
their prediction of the MLP output on typical tokens (the headline; the tokens neither
hook's rule excludes) and on all tokens but position 0; CE loss recovered with the MLP
output replaced by the prediction (ours from its trained metrics, sparsify's spliced the
same way on the same contexts; the SAE's with it replaced by the SAE's reconstruction).
sparsify's headline is the better (lower held-out FVU) of its two optimizers.

Interpretability: the transcoder and the SAE are indexed (`run_index`; without measured
effects unless --effect-contexts says otherwise, so both labels name the de-biased
vocabulary projection of decoder rows that both write at the MLP's output; measured
effects cost minutes of forwards on a CPU) and the same number of features of each,
sampled evenly by density, are explained offline and scored by bench/autointerp.py's
code (`explain_sample`): the AUROC of the embedding scorer's score of a feature's own
explanation against another sampled feature's.

    .venv/bin/python bench/transcoder.py [--smoke] [--tokens N] [--epochs E] [--features F]
        [--ce-contexts C] [--effect-contexts N]

`--smoke` is a crash check: 4,096 tokens, one epoch, width = d_model, CE on 2 contexts,
8 features on a 64-context scoring pool (its numbers mean nothing). The built-in corpus
ends at ~114k tokens: a larger --tokens stops there, so a longer run takes more epochs.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from functools import reduce
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "transcoder"
os.environ.setdefault("SAEFEAT_HOME", str(CACHE))
os.environ.setdefault("SAEFEAT_MODEL_CACHE", str(Path.home() / ".cache" / "saefeat" / "models"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from autointerp import explain_sample, log  # noqa: E402
from quality import SPARSIFY_WARMUP  # noqa: E402

from saefeat.config import get_settings  # noqa: E402
from saefeat.lm import EMBEDDED_MODEL, load_model, model_config_and_tokenizer  # noqa: E402
from saefeat.pipeline import run_harvest, run_index, run_train  # noqa: E402
from saefeat.sae.interop import import_sparsify  # noqa: E402
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec  # noqa: E402
from saefeat.storage.exclusion import excluded_rows, rule_for_set  # noqa: E402
from saefeat.storage.reader import ShuffledBatchReader  # noqa: E402
from saefeat.training.evaluate import evaluate  # noqa: E402
from saefeat.training.model_evals import spliced_metrics_many  # noqa: E402
from saefeat.training.trainer import make_split  # noqa: E402


def harvest(tokens: int) -> tuple:
    """The set of the middle layer's MLP input (after its norm) and output, and its layer."""
    config, _ = model_config_and_tokenizer(EMBEDDED_MODEL)
    layer = config.num_hidden_layers // 2
    hooks = [f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"]
    spec = HarvestSpec(model=EMBEDDED_MODEL, hooks=hooks, ctx_len=128, token_budget=tokens,
                       batch_size=16)  # fmt: skip
    return run_harvest(spec).activation_set, layer


def lockstep(readers: list[ShuffledBatchReader], steps: int):
    """(input, target) batches, epoch after epoch, for `steps` steps: the readers share a
    seed and excluded rows, so they serve the same rows in the same order."""
    step, epoch = 0, 0
    while step < steps:
        its = [r.iter_epoch(epoch) for r in readers]
        try:
            for pair in zip(*its, strict=True):
                if step >= steps:
                    return
                yield pair
                step += 1
        finally:
            for it in its:
                it.close()
        epoch += 1


def train_sparsify(batches, d_in: int, d_sae: int, k: int, steps: int, optimizer: str):
    """sparsify's trainer on a transcoder (trainer.py, loss_fn fvu) with `optimizer`
    "adam" or "signum" (TrainConfig's default)."""
    from schedulefree import ScheduleFreeWrapper
    from sparsify.config import SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from sparsify.sparse_coder import SparseCoder
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    tc = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k, transcode=True),
                     dtype=torch.float32)  # fmt: skip
    width = (d_sae / 2**14) ** 0.5
    sched = None
    if optimizer == "adam":
        opt = torch.optim.Adam(tc.parameters(), lr=2e-4 / width)
        sched = get_linear_schedule_with_warmup(opt, min(SPARSIFY_WARMUP, steps // 10), steps)
    else:
        opt = ScheduleFreeWrapper(SignSGD([{"params": tc.parameters(), "lr": 5e-3 / width}]),
                                  momentum=0.95)  # fmt: skip
        opt.train()
    for step, (x, y) in enumerate(batches):
        if step == 0:  # centre the pre-activations; b_dec is the output's mean
            tc.encoder.bias.data = -x.mean(0) @ tc.encoder.weight.data.T
            tc.b_dec.data = y.mean(0)
        tc(x, y).fvu.backward()  # a transcoder's decoder is neither normalised nor projected
        opt.step()
        opt.zero_grad()
        if sched is not None:
            sched.step()
    if sched is None:
        opt.eval()  # sparsify saves the schedule-free average
    return tc


def heldout_fvu(sae, aset, hooks: list[str], excluded, contexts) -> dict:
    readers = [ShuffledBatchReader(aset, h, 1024, seed=1, excluded=excluded, contexts=contexts)
               for h in hooks]  # fmt: skip
    its = [r.iter_epoch(0) for r in readers]
    try:
        return evaluate(sae, zip(*its, strict=True))
    finally:
        for it in its:
            it.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a crash check (seconds to a minute)")
    ap.add_argument("--tokens", type=int, help="harvest this many tokens (default 200k: the "
                    "whole built-in corpus, ~114k)")  # fmt: skip
    ap.add_argument("--epochs", type=float, help="passes over the training contexts (default 4)")
    ap.add_argument("--features", type=int, help="features explained per model (default 200)")
    ap.add_argument("--ce-contexts", type=int, help="held-out contexts for CE (default 16)")
    ap.add_argument("--effect-contexts", type=int, default=0,
                    help="measured effects: contexts per feature (default 0: none)")  # fmt: skip
    args = ap.parse_args()
    tokens, epochs, features, ce_contexts, expansion, pool = 200_000, 4.0, 200, 16, 8, {}
    if args.smoke:
        tokens, epochs, features, ce_contexts, expansion = 4096, 1.0, 8, 2, 1
        pool = {"pool_contexts": 64}
    tokens = args.tokens or tokens
    epochs = args.epochs or epochs
    features = args.features or features
    ce_contexts = args.ce_contexts or ce_contexts
    k, batch = 32, 256

    t0 = time.perf_counter()
    aset, layer = harvest(tokens)
    hook_in, hook_out = f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    d_in = aset.d_model
    d_sae = expansion * d_in
    t_harvest = time.perf_counter() - t0

    # One sweep: the transcoder and the SAE read the same batches (the union of both
    # hooks' excluded rows), so they take the same steps; CE on the same contexts, each
    # sparing the tokens its own read hook's rule excludes.
    common = dict(activation_set=aset.id, d_sae=d_sae, k=k, batch_size=batch, epochs=epochs)
    tc_spec = TrainSpec(hook=hook_in, hook_out=hook_out, eval_ce_contexts=ce_contexts,
                        name="bench-transcoder", **common)  # fmt: skip
    sae_spec = TrainSpec(hook=hook_out, eval_ce_contexts=ce_contexts,
                         name="bench-transcoder-sae", **common)  # fmt: skip
    log(f"training the transcoder and the SAE: d_sae {d_sae}, k {k}, {epochs:g} epochs")
    t1 = time.perf_counter()
    ours, sae = run_train([tc_spec, sae_spec])
    t_ours = time.perf_counter() - t1
    steps = int(ours.metrics["steps"])

    settings = get_settings()
    split = make_split(settings, tc_spec, aset, [hook_in, hook_out])
    rules = {h: rule_for_set(aset, h, tc_spec.massive_norm_threshold) for h in (hook_in, hook_out)}
    excluded = reduce(np.union1d, [excluded_rows(aset, h, rules[h]) for h in rules])
    readers = [ShuffledBatchReader(aset, h, batch, seed=tc_spec.seed, excluded=excluded,
                                   contexts=split.train_contexts)
               for h in (hook_in, hook_out)]  # fmt: skip
    if steps != int(readers[0].batches_per_epoch * epochs):  # rows differ from saefeat's
        raise SystemExit(f"saefeat took {steps} steps, these readers give "
                         f"{readers[0].batches_per_epoch} an epoch: not its batches")  # fmt: skip
    t2 = time.perf_counter()
    theirs = {}
    for opt in ("adam", "signum"):
        log(f"training sparsify's transcoder ({opt}): {steps} steps")
        tc = train_sparsify(lockstep(readers, steps), d_in, d_sae, k, steps, opt)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / f"layers.{layer}.mlp"  # sparsify's hookpoint for the MLP
            tc.save_to_disk(folder)
            theirs[opt] = import_sparsify(folder, model=EMBEDDED_MODEL).eval()
        assert (theirs[opt].cfg.hook, theirs[opt].cfg.hook_out) == (hook_in, hook_out)
    t_theirs = time.perf_counter() - t2

    log("evaluating on the held-out contexts")
    t3 = time.perf_counter()
    hooks, ctx = [hook_in, hook_out], split.eval_contexts
    m = {}
    candidates = {"saefeat": ours.sae.eval()} | {f"sparsify {o}": tc for o, tc in theirs.items()}
    for name, tc in candidates.items():
        typical = heldout_fvu(tc, aset, hooks, excluded, ctx)
        every = heldout_fvu(tc, aset, hooks, None, ctx)
        m[name] = typical | {"fvu_all_tokens": every["fvu"]}
    best = min(theirs, key=lambda o: m[f"sparsify {o}"]["fvu"])  # the stronger baseline
    m["sae (mlp_out)"] = heldout_fvu(sae.sae.eval(), aset, [hook_out, hook_out], excluded, ctx)
    # sparsify's CE as ours was measured: the same contexts, the input hook's norm limit.
    lm = load_model(EMBEDDED_MODEL)
    ce_tokens = torch.from_numpy(np.asarray(aset.tokens())[split.eval_context_ids()[:ce_contexts]]
                                 .astype("int64"))  # fmt: skip
    limit = rules[hook_in].norm_limit
    (m[f"sparsify {best}"]["ce"],) = spliced_metrics_many(
        [(theirs[best], hook_in)], lm, ce_tokens, norm_limits=[limit]
    )
    for name, result in (("saefeat", ours), ("sae (mlp_out)", sae)):
        m[name]["ce"] = {k_: result.metrics.get(k_) for k_ in
                         ("ce_loss_clean", "ce_loss_with_sae", "ce_loss_zero_ablation",
                          "ce_loss_recovered", "kl_div_score")}  # fmt: skip
    t_eval = time.perf_counter() - t3

    # Interpretability: index both, explain and score the same number of features.
    t4 = time.perf_counter()
    scores = {}
    for label, result in (("transcoder", ours), ("sae", sae)):
        log(f"indexing the {label} {result.sae_id}")
        run_index(IndexSpec(sae=result.sae_id, n_effect_contexts=args.effect_contexts,
                            umap=False))  # fmt: skip
        scores[label], _ = explain_sample(settings, result.sae_id, features, pool)
    t_interp = time.perf_counter() - t4

    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}; "
          f"set {aset.id} ({aset.n_tokens} tokens, {hook_in} -> {hook_out}); d_sae={d_sae} "
          f"k={k} batch={batch} steps={steps} ({readers[0].rows_per_epoch} training rows, "
          f"{steps * batch} tokens trained); held out {split.describe()['contexts']} contexts, "
          f"{m['saefeat']['n_tokens']} typical tokens; harvest {t_harvest:.0f}s, train "
          f"saefeat transcoder + SAE {t_ours:.0f}s, sparsify x2 {t_theirs:.0f}s, eval "
          f"{t_eval:.0f}s, index + explain {t_interp:.0f}s, total "
          f"{time.perf_counter() - t0:.0f}s; home {settings.home}")  # fmt: skip
    for name, v in m.items():
        ce = v.get("ce") or {}
        ce_text = (f"  CE clean {ce['ce_loss_clean']:.4f} spliced {ce['ce_loss_with_sae']:.4f} "
                   f"zero-abl. {ce['ce_loss_zero_ablation']:.4f} recovered "
                   f"{ce['ce_loss_recovered']:.4f}  KL score {ce['kl_div_score']:.4f}"
                   if ce.get("ce_loss_recovered") is not None else "")  # fmt: skip
        all_text = f" (all {v['fvu_all_tokens']:.4f})" if "fvu_all_tokens" in v else ""
        print(f"{name:15s} fvu {v['fvu']:.4f}{all_text}  l0 {v['l0']:.1f}  dead "
              f"{v['dead_frac']:.4f}{ce_text}")  # fmt: skip
    for label, s in scores.items():
        print(f"{label:10s} {s['explained']}/{s['features']} features explained; embedding "
              f"AUROC own vs shuffled {s['auroc_true_vs_shuffled_embedding']}, mean score "
              f"{s['mean_score_embedding']} vs {s['mean_score_shuffled_embedding']}; activation "
              f"AUROC {s['auroc_true_vs_shuffled_activation']}")  # fmt: skip
    a_tc = scores["transcoder"]["auroc_true_vs_shuffled_embedding"]
    a_sae = scores["sae"]["auroc_true_vs_shuffled_embedding"]
    if a_tc is not None and a_sae is not None:
        which = "the transcoder" if a_tc > a_sae else "the SAE" if a_sae > a_tc else "neither"
        print(f"more interpretable by the embedding AUROC: {which} ({a_tc} vs {a_sae})")
    fvu_ours, fvu_theirs = m["saefeat"]["fvu"], m[f"sparsify {best}"]["fvu"]
    print(f"sparsify's better optimizer here: {best}; saefeat / sparsify {best} held-out FVU "
          f"{fvu_ours / fvu_theirs:.4f} (target <= 0.95)")  # fmt: skip
    print(json.dumps({
        "fvu_heldout_transcoder_saefeat": fvu_ours,
        "fvu_heldout_transcoder_sparsify": fvu_theirs,
        "ratio_saefeat_over_sparsify": fvu_ours / fvu_theirs if fvu_theirs else None,
        "ce_recovered_transcoder": ours.metrics.get("ce_loss_recovered"),
        "auroc_embedding_transcoder": a_tc,
        "auroc_embedding_sae": a_sae,
        "steps": steps, "k": k, "d_sae": d_sae, "tokens": int(aset.n_tokens),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
