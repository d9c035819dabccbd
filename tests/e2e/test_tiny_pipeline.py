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
from saefeat.storage.catalog.example_search import duplicate_top_windows
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

    make_position_one_feature(settings, aset, train.sae_id, "blocks.2.hook_resid_post", 0)
    index = run_index(IndexSpec(sae=train.sae_id, n_examples=5, window=3), settings=settings)
    assert index.index.d_sae == 128
    # Effects on the next token: de-biased for every feature, measured for each that fired.
    methods: dict[str, set[int]] = {"measured": set(), "debiased": set()}
    for e in index.index.effects:
        methods[e.method].add(e.feature_index)
    assert methods["debiased"] == set(range(128))
    assert methods["measured"] == set(np.flatnonzero(index.index.density > 0).tolist())
    with catalog_session(settings) as s:
        assert queries.count_features(s, train.sae_id) == 128
        # The latent that fires only on the token after BOS is named an artifact and
        # left out of the default list; every window shows once.
        assert queries.get_feature(s, train.sae_id, 0).artifact == "after special token '<s>'"
        listed = queries.list_features(s, train.sae_id, limit=500).items
        assert 0 not in [f.index for f in listed] and len(listed) < 128
        assert duplicate_top_windows(s, train.sae_id) == 0
        check_map(s, train.sae_id, index.index.umap)
    check_examples_recompute(settings, aset, train.sae_id, str(tiny_llama), torch.float32)
    check_api(settings, train.sae_id)


def check_map(s, sae_id: str, umap) -> None:
    """Every feature has a finite place on the SAE's map, stored as computed (the page
    that draws it: tests/browser/test_sae_map.py)."""
    from sqlalchemy import select

    from saefeat.storage.catalog.models import Feature

    assert umap is not None and umap.shape == (128, 2)
    rows = s.execute(select(Feature.index, Feature.umap_x, Feature.umap_y)
                     .where(Feature.sae_id == sae_id).order_by(Feature.index)).all()  # fmt: skip
    xy = np.array([(x, y) for _, x, y in rows], dtype=float)
    assert xy.shape == (128, 2) and np.isfinite(xy).all()
    np.testing.assert_allclose(xy, umap)
    assert np.ptp(xy, axis=0).min() > 0  # spread out, not one point


def make_position_one_feature(settings, aset, sae_id: str, hook: str, feature: int) -> None:
    """Rewrite one latent of the trained SAE (on disk) into a detector of position 1, the
    token right after BOS: a logistic regression of position 1 against positions >= 3 on
    the harvested activations (separable on this model), scaled so the latent is among
    the top k there and negative elsewhere."""
    from saefeat.sae import load_sae

    x = torch.cat([aset.read_shard(s, hook) for s in aset.committed_shards()]).float()
    pos = torch.arange(x.shape[0]) % aset.ctx_len
    features = torch.cat([x, torch.ones(len(x), 1)], 1)
    target = torch.where(pos == 1, 1.0, -1.0)
    train = (pos == 1) | (pos >= 3)
    w = torch.zeros(x.shape[1] + 1, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=0.1)
    for _ in range(3000):
        loss = torch.nn.functional.softplus(-target[train] * (features[train] @ w)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    score = (features @ w).detach()
    assert score[pos == 1].min() > 0 > score[pos >= 3].max(), "position 1 is not separable"
    scale = 100.0 / float(score[pos == 1].min())
    path = settings.saes_dir / sae_id
    sae = load_sae(path)
    w = w.detach()
    with torch.no_grad():  # encode: (x - b_dec) @ W_enc + b_enc
        sae.W_enc[:, feature] = scale * w[:-1]
        sae.b_enc[feature] = scale * (w[-1] + sae.b_dec @ w[:-1])
    sae.save(path, overwrite=True)


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
