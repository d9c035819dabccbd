"""Crosscoders: one dictionary over two models' activations on the same tokens (or over
layers of one set); per-source decoder norms say which latents belong to which model."""

import numpy as np
import pytest
import torch

from saefeat.errors import SpecError
from saefeat.sae import load_sae
from saefeat.sae.crosscoder import (
    EXCLUSIVE_BELOW,
    decoder_norms,
    dominant_rows,
    in_training_units,
    relative_norm,
    sharing,
    source_scales,
)
from saefeat.specs import TrainSpec
from saefeat.storage.activations import ActivationSet
from saefeat.storage.stats import set_statistics
from saefeat.training.trainer import train_sae

HOOK = "blocks.1.hook_resid_post"
D, CTX, N_CTX, PER_SHARD = 16, 16, 96, 16
SHARED, B_ONLY = 12, 4  # features: in both models (each its own direction), in B only


def _set(root, set_id: str, model: str, rows: torch.Tensor, tokens) -> ActivationSet:
    aset = ActivationSet.create(
        root / f"{set_id}.zarr", set_id=set_id, spec={"model": model}, model=model,
        hooks=[HOOK], d_model=D, tokens=tokens, doc_index=np.zeros(N_CTX),
        doc_offset=np.zeros(N_CTX), doc_ids=["d"], contexts_per_shard=PER_SHARD,
        storage_dtype="float32",
    )  # fmt: skip
    for shard in range(aset.n_shards):
        r0, r1 = aset.shard_rows(shard)
        aset.write_shard(shard, {HOOK: rows[r0:r1]})
    aset.mark_complete(set_statistics(aset))
    return aset


@pytest.fixture
def model_pair(settings):
    """Sets of models A and B on the same tokens: B has A's features (in directions of its
    own) and B_ONLY more, which A never represents."""
    settings.activations_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    n = N_CTX * CTX
    coef = torch.zeros(n, SHARED + B_ONLY)
    pick = torch.rand(n, SHARED + B_ONLY, generator=g).argsort(1)[:, :3]
    coef.scatter_(1, pick, torch.rand(n, 3, generator=g) * 3 + 0.5)
    dirs_a = torch.randn(SHARED, D, generator=g)
    dirs_b = torch.randn(SHARED + B_ONLY, D, generator=g)
    a_rows, b_rows = coef[:, :SHARED] @ dirs_a, coef @ dirs_b
    tokens = np.random.default_rng(0).integers(0, 100, (N_CTX, CTX))
    a = _set(settings.activations_dir, "as-00000000000000a0", "model-a", a_rows, tokens)
    b = _set(settings.activations_dir, "as-00000000000000b0", "model-b", b_rows, tokens)
    return a, b, dirs_b[SHARED:]


def _spec(a, b, **kw) -> TrainSpec:
    return TrainSpec(activation_set=a.id, sources=[{"hook": HOOK}, {"activation_set": b.id,
                     "hook": HOOK}], d_sae=48, k=3, batch_size=64, epochs=12, lr=1e-2,
                     eval_ce_contexts=0, **kw)  # fmt: skip


def test_b_only_features_get_b_only_latents(settings, model_pair):
    a, b, b_only_dirs = model_pair
    result = train_sae(_spec(a, b), settings=settings)
    sae = result.sae
    assert sae.cfg.architecture == "batchtopk" and sae.cfg.is_crosscoder
    assert [s["activation_set"] for s in sae.cfg.sources] == [a.id, b.id]
    assert sae.cfg.d_in == 2 * D and len(result.metrics["fvu_by_source"]) == 2
    assert result.metrics["fvu"] < 0.3
    # The latents that learned a B-only feature (B's decoder part along its direction)
    # are B-only; those that fire on A's data too are not.
    W = in_training_units(sae.W_dec.detach(), sae.cfg.source_widths, source_scales(sae.cfg))
    rel = relative_norm(decoder_norms(W, sae.cfg.source_widths))
    b_part = torch.nn.functional.normalize(W[:, D:], dim=1)
    cos = b_part @ torch.nn.functional.normalize(b_only_dirs, dim=1).T  # [d_sae, B_ONLY]
    learned = cos.max(0)
    assert (learned.values > 0.9).sum() >= 3, learned.values
    for latent in learned.indices[learned.values > 0.9].tolist():
        assert rel[latent] > 1 - EXCLUSIVE_BELOW, (latent, rel[latent])
    alive = decoder_norms(W, sae.cfg.source_widths).sum(1) > 0
    assert ((rel > EXCLUSIVE_BELOW) & (rel < 1 - EXCLUSIVE_BELOW) & alive).sum() >= SHARED // 2

    # The checkpoint reads raw activations of both models, concatenated (scales folded).
    loaded = load_sae(result.checkpoint)
    x = torch.cat([a.read_shard(0, HOOK), b.read_shard(0, HOOK)], 1)
    err = (loaded(x).x_hat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert float(err) < 0.3


def test_a_layers_crosscoder_reads_hooks_of_one_set(settings):
    from synthetic_sets import HOOKS, make_set

    settings.activations_dir.mkdir(parents=True, exist_ok=True)
    aset = make_set(settings.activations_dir)
    spec = TrainSpec(activation_set=aset.id, sources=[{"hook": h} for h in HOOKS], d_sae=64,
                     k=4, batch_size=64, epochs=2, eval_ce_contexts=0)  # fmt: skip
    result = train_sae(spec, settings=settings)
    assert [s["hook"] for s in result.sae.cfg.sources] == HOOKS
    assert 0 < result.metrics["fvu"] < 1 and len(result.metrics["fvu_by_source"]) == 2


def test_sources_must_hold_the_same_tokens(settings, model_pair):
    a, b, _ = model_pair
    other = np.random.default_rng(1).integers(0, 100, (N_CTX, CTX))
    c = _set(settings.activations_dir, "as-00000000000000c0", "model-c",
             torch.randn(N_CTX * CTX, D), other)  # fmt: skip
    with pytest.raises(SpecError) as e:
        train_sae(_spec(a, c), settings=settings)
    assert e.value.field == "sources" and "tokens" in e.value.message


def test_norms_classes_and_dominant_rows():
    W = torch.zeros(3, 4)
    W[0, :2] = torch.tensor([3.0, 4.0])  # A only
    W[1, 2:] = torch.tensor([0.0, 2.0])  # B only
    W[2] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # both alike
    norms = decoder_norms(W, [2, 2])
    assert norms.tolist() == [[5.0, 0.0], [0.0, 2.0], [1.0, 1.0]]
    rel = relative_norm(norms)
    assert [sharing(float(r)) for r in rel] == ["a_only", "b_only", "shared"]
    assert dominant_rows(W, [2, 2])[1].tolist() == [0.0, 2.0]
    assert relative_norm(decoder_norms(torch.ones(2, 6), [2, 2, 2])) is None


def test_a_louder_source_does_not_make_latents_its_own(settings):
    """B holds A's features at 10x the norm: every latent is shared in the units training
    saw (each source scaled alike); raw decoder norms would call many of them B-only."""
    settings.activations_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(1)
    n = N_CTX * CTX
    coef = torch.zeros(n, SHARED)
    coef.scatter_(1, torch.rand(n, SHARED, generator=g).argsort(1)[:, :3],
                  torch.rand(n, 3, generator=g) * 3 + 0.5)  # fmt: skip
    rows = coef @ torch.randn(SHARED, D, generator=g)
    tokens = np.random.default_rng(0).integers(0, 100, (N_CTX, CTX))
    a = _set(settings.activations_dir, "as-00000000000000a1", "model-a", rows, tokens)
    b = _set(settings.activations_dir, "as-00000000000000b1", "model-b", rows * 10, tokens)
    sae = train_sae(_spec(a, b), settings=settings).sae
    widths, scales = sae.cfg.source_widths, source_scales(sae.cfg)
    assert scales is not None and scales[0] > 5 * scales[1]
    alive = decoder_norms(sae.W_dec.detach(), widths).sum(1) > 0
    rel = relative_norm(decoder_norms(in_training_units(sae.W_dec.detach(), widths, scales),
                                      widths))[alive]  # fmt: skip
    assert all(sharing(float(r)) == "shared" for r in rel), rel
    raw = relative_norm(decoder_norms(sae.W_dec.detach(), widths))[alive]
    assert float(raw.median()) > 0.8  # what the saved weights alone would say


def test_single_hook_exports_refuse_a_crosscoder(settings, model_pair):
    from saefeat.sae.interop import export_stored

    a, b, _ = model_pair
    result = train_sae(_spec(a, b, seed=1), settings=settings)
    for to in ("saelens", "sparsify"):
        with pytest.raises(SpecError) as e:
            export_stored(settings, result.sae_id, to, settings.home / f"out-{to}")
        assert e.value.field == "sae" and "crosscoder" in e.value.message
