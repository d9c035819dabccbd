"""The whole pipeline on a tiny random Llama built in the test: seconds, real Ray."""

import numpy as np
import pytest
import torch
from checks import check_api, check_examples_recompute

from saefeat.pipeline import run_harvest, run_index, run_train
from saefeat.specs import HarvestSpec, IndexSpec, TrainSpec
from saefeat.storage.activations import STATUS_COMPLETE
from saefeat.storage.catalog import queries
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.models import ActivationSetRow


@pytest.fixture
def harvest_spec(tiny_llama):
    return HarvestSpec(
        model=str(tiny_llama),
        hooks=["blocks.2.hook_resid_post", "blocks.1.hook_mlp_out"],
        ctx_len=32,
        token_budget=32 * 48,
        contexts_per_shard=8,
        model_dtype="float32",
    )


def test_tiny_pipeline(settings, ray_session, harvest_spec, tiny_llama):
    result = run_harvest(harvest_spec, settings=settings)
    aset = result.activation_set
    assert aset.status == STATUS_COMPLETE and aset.n_shards == 6
    assert aset.acts_array("blocks.2.hook_resid_post").shape == (48 * 32, 64)
    assert aset.tokens().shape == (48, 32)
    assert set(aset.stats) == set(harvest_spec.hooks)

    with catalog_session(settings) as s:  # the set is mirrored, with the model's layers
        row = s.get(ActivationSetRow, aset.id)
        assert row.n_tokens == aset.n_tokens and len(row.shards) == aset.n_shards
        assert row.model.n_layers == aset.n_layers > 0

    # The same spec again reuses the finished set.
    assert run_harvest(harvest_spec, settings=settings).reused

    train = run_train(
        TrainSpec(activation_set=aset.id, d_sae=128, k=8, batch_size=64, epochs=3, lr=3e-3),
        settings=settings,
    )
    assert train.metrics["fvu"] < 1.0
    assert 0 < train.metrics["l0"] <= 8

    index = run_index(IndexSpec(sae=train.sae_id, n_examples=5, window=3), settings=settings)
    assert index.index.d_sae == 128
    with catalog_session(settings) as s:
        assert queries.count_features(s, train.sae_id) == 128
    check_examples_recompute(settings, aset, train.sae_id, str(tiny_llama), torch.float32)
    check_api(settings, train.sae_id)


def test_resume_redoes_only_missing_shards(settings, ray_session, harvest_spec):
    first = run_harvest(harvest_spec, settings=settings).activation_set
    hook = harvest_spec.hooks[0]
    before = {s: first.read_shard(s, hook) for s in range(first.n_shards)}
    # Pretend the job died before shards 2 and 4 committed.
    first.drop_shard(2)
    first.drop_shard(4)
    first.group.attrs["status"] = "harvesting"
    again = run_harvest(harvest_spec, settings=settings)
    assert not again.reused and again.shards_run == 2
    for s in range(first.n_shards):
        torch.testing.assert_close(again.activation_set.read_shard(s, hook), before[s])
    assert np.array_equal(again.activation_set.tokens(), first.tokens())
