import json

import pytest
import torch

from saefeat.errors import NotFoundError, SpecError
from saefeat.sae import SAEConfig, architectures, load_sae
from saefeat.sae.topk import TopKSAE


def test_registry_knows_topk():
    assert "topk" in architectures()


def test_topk_keeps_k_latents_and_reconstructs_shape():
    sae = TopKSAE(SAEConfig(d_in=24, d_sae=96, k=5))
    out = sae(torch.randn(11, 24))
    assert out.x_hat.shape == (11, 24) and out.idx.shape == (11, 5)
    assert (out.vals >= 0).all()
    dense = sae.dense_activations(torch.randn(3, 24))
    assert ((dense > 0).sum(1) <= 5).all()


def test_init_is_unit_norm_decoder_and_tied_encoder():
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=40, k=4))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())


@pytest.mark.parametrize("k", [0, 40, 41])
def test_k_must_fit(k):
    with pytest.raises(SpecError, match="k must be|greater than 0"):
        TopKSAE(SAEConfig(d_in=16, d_sae=40, k=k))


def test_fold_input_scale_gives_same_latents_and_raw_reconstruction():
    torch.manual_seed(0)
    sae = TopKSAE(SAEConfig(d_in=16, d_sae=64, k=6))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.1)
    x = torch.randn(20, 16) * 50
    s = 0.02
    before = sae(x * s)
    sae.fold_input_scale(s)
    after = sae(x)
    torch.testing.assert_close(before.vals, after.vals, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(before.x_hat / s, after.x_hat, rtol=1e-4, atol=1e-3)


def test_checkpoint_roundtrip(tmp_path):
    sae = TopKSAE(SAEConfig(d_in=8, d_sae=32, k=3, model="m", hook="blocks.0.hook_resid_post"))
    path = sae.save(tmp_path / "ck")
    assert sorted(p.name for p in path.iterdir()) == ["cfg.json", "sae.safetensors"]
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["hook"] == "blocks.0.hook_resid_post"
    again = load_sae(path)
    x = torch.randn(4, 8)
    torch.testing.assert_close(sae(x).x_hat, again(x).x_hat)
    with pytest.raises(SpecError, match="refusing to overwrite"):
        sae.save(path)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(NotFoundError):
        load_sae(tmp_path / "none")
    sae = TopKSAE(SAEConfig(d_in=8, d_sae=32, k=3))
    path = sae.save(tmp_path / "ck")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps(cfg | {"format_version": 99}))
    with pytest.raises(SpecError, match="newer saefeat"):
        load_sae(path)
    (path / "cfg.json").write_text(json.dumps(cfg | {"architecture": "gated-x"}))
    with pytest.raises(SpecError, match="unknown architecture"):
        load_sae(path)
