"""Transcoders on a tiny random Llama: one harvest stores the MLP's input and output
row-aligned, a sweep trains a transcoder beside an SAE on the same batches, and the
checkpoint acts on raw activations the model computes afresh."""

import torch
from fastapi.testclient import TestClient

from saefeat.api.app import create_app
from saefeat.lm import load_model, parse_hook, run_to_hooks
from saefeat.pipeline import run_harvest
from saefeat.sae import load_sae
from saefeat.specs import HarvestSpec, TrainSpec
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.models import SAE
from saefeat.workers.train_job import train_and_record

READ, WRITTEN = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def test_transcoder_trains_on_paired_hooks_and_predicts_the_mlp(settings, ray_session,
                                                                  tiny_llama):  # fmt: skip
    spec = HarvestSpec(model=str(tiny_llama), hooks=[READ, WRITTEN], ctx_len=32,
                       token_budget=32 * 64, contexts_per_shard=8,
                       model_dtype="float32")  # fmt: skip
    aset = run_harvest(spec, settings=settings).activation_set
    assert aset.acts_array(READ).shape == aset.acts_array(WRITTEN).shape  # row-aligned

    common = {"activation_set": aset.id, "d_sae": 128, "k": 8, "batch_size": 64, "epochs": 3,
              "lr": 3e-3, "eval_ce_contexts": 4}  # fmt: skip
    transcoder = TrainSpec(hook=READ, hook_out=WRITTEN, skip_connection=True, **common)
    sae = TrainSpec(hook=WRITTEN, **common)
    got = train_and_record([transcoder, sae], settings=settings)
    tc = got[0]
    assert tc.sae.cfg.hook == READ and tc.sae.cfg.hook_out == WRITTEN
    assert tc.sae.W_skip is not None and float(tc.sae.W_skip.detach().abs().sum()) > 0
    assert 0 < tc.metrics["fvu"] < 0.9 and 0 < tc.metrics["l0"] <= 8
    assert {"ce_loss_recovered", "kl_div_score"} <= set(tc.metrics)  # the MLP replaced
    # The SAE's zero ablation is of the same hook (mlp_out): the two share that run.
    assert tc.metrics["ce_loss_zero_ablation"] == got[1].metrics["ce_loss_zero_ablation"]

    # The checkpoint predicts the MLP's output from its input in raw units (scales folded).
    loaded = load_sae(tc.checkpoint)
    lm = load_model(str(tiny_llama))
    ids = torch.from_numpy(aset.tokens(0, 8)).long()  # the corpus's text, run afresh
    acts = run_to_hooks(lm, ids, [parse_hook(READ), parse_hook(WRITTEN)])
    x, y = (acts[h][:, 1:].reshape(-1, 64).float() for h in (READ, WRITTEN))
    with torch.no_grad():
        y_hat = loaded(x).x_hat
    fvu = float((y_hat - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert fvu < 0.9, fvu
    assert torch.allclose(loaded(x).x_hat, tc.sae(x).x_hat, atol=1e-5)

    with catalog_session(settings) as s:
        row = s.get(SAE, tc.sae_id)
        assert (row.hook_name, row.hook_out_name) == (READ, WRITTEN)
        assert s.get(SAE, got[1].sae_id).hook_out_name is None
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/v1/saes/{tc.sae_id}").json()
        assert (body["kind"], body["hook"], body["hook_out"]) == ("transcoder", READ, WRITTEN)
        assert client.get(f"/v1/saes/{got[1].sae_id}").json()["kind"] == "sae"
