"""Round trips through the SAELens and sparsify layouts; sparsify's files come from the
real library (eai-sparsify, run on the CPU without Triton)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from saefeat.errors import SpecError
from saefeat.sae import SAEConfig
from saefeat.sae.base import sae_class
from saefeat.sae.interop import export_saelens, export_sparsify, import_saelens, import_sparsify


def random_sae(arch: str, d_in: int = 12, d_sae: int = 48, k: int | None = 5):
    torch.manual_seed(0)
    k = k if arch in ("topk", "batchtopk", "matryoshka_batchtopk") else None
    sae = sae_class(arch)(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k,
                                    model="m", hook="blocks.3.hook_resid_post"))  # fmt: skip
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.1, 0.5)
    return sae.eval()


@pytest.mark.parametrize("arch", ["topk", "relu", "jumprelu", "batchtopk"])
def test_saelens_roundtrip(tmp_path, arch):
    sae = random_sae(arch)
    path = export_saelens(sae, tmp_path / "sl", context_size=128)
    cfg = json.loads((path / "cfg.json").read_text())
    want = {"topk": "topk", "relu": "standard", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}
    assert cfg["architecture"] == want[arch]
    assert cfg["d_in"] == 12 and cfg["d_sae"] == 48 and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["dtype"] == "float32"
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "m" and cfg["metadata"]["context_size"] == 128
    assert (cfg.get("k") == 5) == (arch == "topk")
    names = set(load_file(str(path / "sae_weights.safetensors")))
    assert {"W_enc", "b_enc", "W_dec", "b_dec"} <= names
    assert ("threshold" in names) == (want[arch] == "jumprelu")
    back = import_saelens(path)
    x = torch.randn(7, 12) * 2
    torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)
    torch.testing.assert_close(back.dense_activations(x), sae.dense_activations(x))


def saelens_forward(cfg: dict, w: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens's inference math, written from its source (saes/*.py)."""
    sae_in = x - w["b_dec"] * cfg["apply_b_dec_to_input"]
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "jumprelu":
        acts = torch.relu(pre) * (pre > w["threshold"])
    elif cfg["architecture"] == "topk":
        top = pre.topk(cfg["k"], dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    else:
        acts = torch.relu(pre)
    return acts @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_saelens_files_without_b_dec_on_input_import(tmp_path, arch):
    torch.manual_seed(1)
    w = {"W_enc": torch.randn(10, 40), "b_enc": torch.randn(40) * 0.2,
         "W_dec": torch.randn(40, 10), "b_dec": torch.randn(10)}  # fmt: skip
    if arch == "jumprelu":
        w["threshold"] = torch.rand(40)
    cfg = {"architecture": arch, "d_in": 10, "d_sae": 40, "dtype": "float32",
           "apply_b_dec_to_input": False, "normalize_activations": "none",
           "metadata": {"model_name": "gpt2", "hook_name": "blocks.1.hook_resid_pre"}}  # fmt: skip
    if arch == "topk":
        cfg["k"] = 6
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = import_saelens(tmp_path)
    assert sae.cfg.hook == "blocks.1.hook_resid_pre" and sae.cfg.model == "gpt2"
    x = torch.randn(9, 10)
    torch.testing.assert_close(sae(x).x_hat, saelens_forward(cfg, w, x), rtol=1e-4, atol=1e-4)


def test_saelens_runtime_normalisation_is_refused(tmp_path):
    path = export_saelens(random_sae("topk"), tmp_path / "sl")
    cfg = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps(cfg | {"normalize_activations": "layer_norm"}))
    with pytest.raises(SpecError, match="normalize_activations"):
        import_saelens(path)


def test_export_refuses_to_overwrite(tmp_path):
    path = export_sparsify(random_sae("topk"), tmp_path / "sp")
    with pytest.raises(SpecError, match="refusing to overwrite"):
        export_sparsify(random_sae("topk"), path)
    with pytest.raises(SpecError, match="TopK SAEs only"):
        export_sparsify(random_sae("relu"), tmp_path / "other")


@pytest.fixture(scope="module")
def sparsify():
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    return pytest.importorskip("sparsify.sparse_coder")


def test_sparsify_reads_our_export(tmp_path, sparsify):
    sae = random_sae("topk")
    path = export_sparsify(sae, tmp_path / "layers.3")
    theirs = sparsify.SparseCoder.load_from_disk(path)
    assert theirs.num_latents == 48 and theirs.cfg.k == 5
    x = torch.randn(6, 12)
    with torch.no_grad():
        out = theirs(x)
        ours = sae(x)
    torch.testing.assert_close(out.sae_out, ours.x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.latent_acts.sort(1).values, ours.vals.sort(1).values)


def test_we_read_sparsify_files(tmp_path, sparsify):
    from sparsify.config import SparseCoderConfig

    torch.manual_seed(2)
    theirs = sparsify.SparseCoder(16, SparseCoderConfig(num_latents=64, k=7))
    with torch.no_grad():
        theirs.b_dec.normal_()
        theirs.encoder.bias.normal_(std=0.3)
    theirs.save_to_disk(tmp_path / "layers.5")
    ours = import_sparsify(tmp_path / "layers.5", model="m", hook="blocks.5.hook_resid_post")
    assert ours.cfg.d_sae == 64 and ours.cfg.k == 7 and ours.cfg.hook.startswith("blocks.5")
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).x_hat, theirs(x).sae_out, rtol=1e-5, atol=1e-5)
    # and back out again: the files sparsify reads are the same weights
    again = sparsify.SparseCoder.load_from_disk(export_sparsify(ours, tmp_path / "again"))
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value)
