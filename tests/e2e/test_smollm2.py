"""The real embedded model, SmolLM2-135M, over a few thousand tokens of the built-in corpus."""

import pytest
from checks import check_api, check_examples_recompute

from saefeat.lm import auto_dtype, load_model
from saefeat.pipeline import run_harvest, run_index, run_train
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec


@pytest.mark.slow
def test_smollm2_pipeline(settings, ray_session):
    spec = HarvestSpec(hooks=["blocks.15.hook_resid_post"], ctx_len=128, token_budget=4096,
                       contexts_per_shard=8, batch_size=8)  # fmt: skip
    aset = run_harvest(spec, settings=settings).activation_set
    assert aset.acts_array(spec.hooks[0]).shape == (32 * 128, 576)
    assert aset.n_shards == 4

    train = run_train(
        TrainSpec(
            activation_set=aset.id, expansion_factor=4, k=16, batch_size=128, epochs=4, lr=1e-3
        ),  # fmt: skip
        settings=settings,
    )
    assert train.sae.cfg.d_sae == 4 * 576
    assert train.metrics["fvu"] < 1.0  # beats predicting the mean

    run_index(IndexSpec(sae=train.sae_id, n_examples=10), settings=settings)
    check_examples_recompute(settings, aset, train.sae_id, "smollm2-135m", auto_dtype("cpu"))
    check_api(settings, train.sae_id)


def test_smollm2_loads_with_its_tokenizer():
    lm = load_model("smollm2-135m")
    assert (lm.n_layers, lm.d_model) == (30, 576)
    assert lm.tokenizer.decode(lm.tokenizer("def f(x):")["input_ids"]) == "def f(x):"
