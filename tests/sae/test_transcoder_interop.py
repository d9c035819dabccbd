"""Transcoders through sparsify's and circuit-tracer's layouts, checked against the real
packages: eai-sparsify (a dev extra, run on the CPU without Triton) both ways, and
circuit-tracer's own loaders, attribution included, in a venv of its own (its pins,
transformers<=4.57.3 and huggingface-hub<1, cannot sit beside ours): the test runs it
in a subprocess when that venv exists ($SAEFEAT_CIRCUIT_TRACER_PYTHON, else
.venv-circuit-tracer/bin/python at the repository root) and is skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_interop import random_sae
from typer.testing import CliRunner

from saefeat.errors import SpecError
from saefeat.sae import SAEConfig, load_sae
from saefeat.sae.base import sae_class
from saefeat.sae.circuit_tracer import export_circuit_tracer
from saefeat.sae.interop import (
    export_saelens,
    export_sparsify,
    import_sparsify,
    read_foreign,
    sparsify_hook,
    sparsify_transcoder_hooks,
)

REPO = Path(__file__).resolve().parents[2]
IN_KINDS = {"ln2": "ln2.hook_normalized", "resid_mid": "hook_mlp_in"}


def random_transcoder(arch: str = "topk", *, layer: int = 3, d_in: int = 12, d_sae: int = 48,
                      k: int | None = 5, skip: bool = True, d_out: int | None = None,
                      inp: str = "ln2", seed: int = 0):  # fmt: skip
    torch.manual_seed(seed)
    k = k if arch in ("topk", "batchtopk", "matryoshka_batchtopk") else None
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k, model="m",
                    hook=f"blocks.{layer}.{IN_KINDS[inp]}", hook_out=f"blocks.{layer}.hook_mlp_out",
                    d_out=d_out, skip_connection=skip)  # fmt: skip
    sae = sae_class(arch)(cfg)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(std=0.3)
        if sae.W_skip is not None:
            sae.W_skip.normal_(std=0.2)
        if hasattr(sae, "threshold"):
            sae.threshold.uniform_(0.1, 0.5)
    return sae.eval()


@pytest.fixture(scope="module")
def sparsify():
    os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    return pytest.importorskip("sparsify.sparse_coder")


# ---- sparsify --------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [False, True])
def test_we_read_sparsify_transcoders(tmp_path, sparsify, skip):
    from sparsify.config import SparseCoderConfig

    torch.manual_seed(2)
    cfg = SparseCoderConfig(num_latents=64, k=7, transcode=True, skip_connection=skip)
    theirs = sparsify.SparseCoder(16, cfg)
    with torch.no_grad():  # a transcoder starts with W_dec (and W_skip) zero
        for p in theirs.parameters():
            p.normal_(std=0.3)
    theirs.save_to_disk(tmp_path / "layers.5.mlp")
    ours = import_sparsify(tmp_path / "layers.5.mlp", model="m")
    assert ours.cfg.is_transcoder and ours.cfg.skip_connection == skip
    # a sparsify transcoder's hookpoint is the MLP: its input after the norm -> its output
    assert ours.cfg.hook == "blocks.5.ln2.hook_normalized"
    assert ours.cfg.hook_out == "blocks.5.hook_mlp_out" and ours.cfg.out_dim == 16
    x, y = torch.randn(9, 16), torch.randn(9, 16)
    with torch.no_grad():
        out, mine = theirs(x, y), ours(x)
    torch.testing.assert_close(mine.x_hat, out.sae_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine.vals.sort(1).values, out.latent_acts.sort(1).values)
    # and back out again: the same weights, the hooks in our side keys
    path = export_sparsify(ours, tmp_path / "again")
    raw = json.loads((path / "cfg.json").read_text())
    assert raw["transcode"] is True and raw["skip_connection"] == skip and raw["d_in"] == 16
    assert raw["saefeat_hook_out"] == "blocks.5.hook_mlp_out"
    again = sparsify.SparseCoder.load_from_disk(path)
    assert again.cfg.transcode and again.cfg.skip_connection == skip
    assert again.state_dict().keys() == theirs.state_dict().keys()
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value)


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_reads_our_transcoder(tmp_path, sparsify, skip):
    sae = random_transcoder(d_in=12, skip=skip)
    path = export_sparsify(sae, tmp_path / "tc")  # a folder name that is no hookpoint
    names = set(load_file(str(path / "sae.safetensors")))
    assert names == {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} | (
        {"W_skip"} if skip else set()
    )
    theirs = sparsify.SparseCoder.load_from_disk(path)
    assert theirs.cfg.transcode and theirs.cfg.skip_connection == skip and theirs.d_in == 12
    x = torch.randn(8, 12) * 2
    with torch.no_grad():
        out, ours = theirs(x, torch.randn(8, 12)), sae(x)
    assert (ours.x_hat != sae.decode(ours.vals, ours.idx)).any() == skip  # the skip path acts
    torch.testing.assert_close(out.sae_out, ours.x_hat, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.latent_acts.sort(1).values, ours.vals.sort(1).values)
    back = import_sparsify(path)
    assert (back.cfg.hook, back.cfg.hook_out) == (sae.cfg.hook, sae.cfg.hook_out)
    torch.testing.assert_close(back(x).x_hat, ours.x_hat)


def test_sparsify_hookpoints_name_our_hooks():
    assert sparsify_transcoder_hooks("layers.6.mlp") == (
        "blocks.6.ln2.hook_normalized",
        "blocks.6.hook_mlp_out",
    )
    assert sparsify_transcoder_hooks("model.layers.11.mlp")[1] == "blocks.11.hook_mlp_out"
    assert sparsify_transcoder_hooks("h.2.mlp")[0] == "blocks.2.ln2.hook_normalized"
    assert sparsify_transcoder_hooks("layers.6") is None  # a whole block: no MLP pair
    assert sparsify_transcoder_hooks("layers.6.self_attn") is None
    assert sparsify_hook("layers.6") == "blocks.6.hook_resid_post"  # SAEs: as before


def _strip_side_keys(path: Path) -> None:
    raw = json.loads((path / "cfg.json").read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("saefeat_")}
    (path / "cfg.json").write_text(json.dumps(raw))


def test_a_transcoder_of_another_module_needs_its_hooks(tmp_path):
    path = export_sparsify(random_transcoder(layer=2), tmp_path / "layers.2")
    _strip_side_keys(path)
    with pytest.raises(SpecError, match="output hook") as e:
        import_sparsify(path, model="m")
    assert e.value.field == "hook_out"
    sae = import_sparsify(path, model="m", hook="blocks.2.hook_mlp_in",
                          hook_out="blocks.2.hook_mlp_out")  # fmt: skip
    assert sae.cfg.is_transcoder and sae.cfg.hook == "blocks.2.hook_mlp_in"
    with pytest.raises(SpecError) as e:  # the pair must be one layer's MLP
        read_foreign(path, model="m", hook="blocks.2.ln2.hook_normalized",
                     hook_out="blocks.3.hook_mlp_out")  # fmt: skip
    assert e.value.field == "hook_out"


def test_transcoder_refusals(tmp_path, sparsify):
    from sparsify.config import SparseCoderConfig

    # sparsify's skip connection on an SAE (its encoder centres x) has no counterpart
    sparsify.SparseCoder(8, SparseCoderConfig(num_latents=32, k=3, skip_connection=True)
                         ).save_to_disk(tmp_path / "layers.1")  # fmt: skip
    with pytest.raises(SpecError) as e:
        import_sparsify(tmp_path / "layers.1", model="m")
    assert e.value.field == "skip_connection"
    # an output hook for an SAE would turn it into a transcoder that encodes differently
    sae_path = export_sparsify(random_sae("topk"), tmp_path / "sae")
    with pytest.raises(SpecError) as e:
        import_sparsify(sae_path, hook_out="blocks.3.hook_mlp_out")
    assert e.value.field == "hook_out"
    # sparsify has one width; SAELens's export writes SAEs only
    with pytest.raises(SpecError) as e:
        export_sparsify(random_transcoder(d_out=10), tmp_path / "wide")
    assert e.value.field == "d_out"
    with pytest.raises(SpecError) as e:
        export_sparsify(random_transcoder("relu"), tmp_path / "relu")
    assert e.value.field == "architecture"
    with pytest.raises(SpecError) as e:
        export_saelens(random_transcoder(), tmp_path / "sl")
    assert e.value.field == "hook_out" and "\n" not in str(e.value)


# ---- circuit-tracer ----------------------------------------------------------------------


def transcoder_set(skip: bool, inp: str, archs=("relu", "jumprelu", "batchtopk")):
    return [random_transcoder(a, layer=i, d_in=16, d_sae=40, skip=skip, inp=inp, seed=i)
            for i, a in enumerate(archs)]  # fmt: skip


def test_circuit_tracer_layout(tmp_path):
    saes = transcoder_set(True, "ln2")
    with torch.no_grad():
        saes[2].threshold[:3] = -0.2  # below 0 it changes nothing for relu'd latents
    path = export_circuit_tracer(saes[::-1], tmp_path / "set")  # any order
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yaml", "layer_0.safetensors", "layer_1.safetensors", "layer_2.safetensors"
    ]  # fmt: skip
    lines = dict(line.split(": ", 1) for line in (path / "config.yaml").read_text().splitlines())
    config = {k: json.loads(v) for k, v in lines.items()}
    assert config == {"model_name": "m", "model_kind": "transcoder_set",
                      "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out",
                      "scan": "set", "saefeat_model": "m"}  # fmt: skip
    for layer, sae in enumerate(saes):
        w = load_file(str(path / f"layer_{layer}.safetensors"))
        want = {"W_enc": (40, 16), "W_dec": (40, 16), "b_enc": (40,), "b_dec": (16,),
                "W_skip": (16, 16)}  # fmt: skip
        if sae.cfg.architecture != "relu":
            want["activation_function.threshold"] = (40,)
        assert {k: tuple(v.shape) for k, v in w.items()} == want
        torch.testing.assert_close(w["W_enc"], sae.W_enc.detach().t())
        torch.testing.assert_close(w["W_skip"], sae.W_skip.detach())
        if "activation_function.threshold" in w:
            torch.testing.assert_close(w["activation_function.threshold"],
                                       sae.threshold.clamp(min=0))  # fmt: skip
    # our hook_mlp_in is TransformerLens's resid_mid; no skip path, no W_skip
    path = export_circuit_tracer(transcoder_set(False, "resid_mid"), tmp_path / "mid")
    assert 'feature_input_hook: "hook_resid_mid"' in (path / "config.yaml").read_text()
    assert "W_skip" not in load_file(str(path / "layer_0.safetensors"))


def test_circuit_tracer_refusals(tmp_path):
    def refused(saes, field):
        with pytest.raises(SpecError) as e:
            export_circuit_tracer(saes, tmp_path / "out")
        assert e.value.field == field and "\n" not in str(e.value)
        assert not (tmp_path / "out").exists()

    refused([random_sae("jumprelu")], "hook_out")  # an SAE
    refused([random_transcoder("topk", layer=0)], "architecture")  # no threshold to give
    refused([random_transcoder("relu", layer=0, d_out=10)], "d_out")
    refused([random_transcoder("relu", layer=1)], "sae")  # layer 0 missing
    refused([random_transcoder("relu", layer=0), random_transcoder("relu", layer=0)], "sae")
    pair = [random_transcoder("relu", layer=0), random_transcoder("relu", layer=1, skip=False)]
    refused(pair, "skip_connection")
    pair = [random_transcoder("relu", layer=0), random_transcoder("relu", layer=1, d_sae=32)]
    refused(pair, "d_sae")
    pair = [random_transcoder("relu", layer=0), random_transcoder("relu", layer=1, inp="resid_mid")]
    refused(pair, "hook")


def _circuit_tracer_python() -> str | None:
    found = os.environ.get("SAEFEAT_CIRCUIT_TRACER_PYTHON") or str(
        REPO / ".venv-circuit-tracer" / "bin" / "python"
    )
    return found if Path(found).is_file() else None


# Run by circuit-tracer's own venv: its loader (the cache route that
# ReplacementModel.from_pretrained and its CLI take), its encode/decode and the sparse
# path attribution uses, then a tiny random Llama-style TransformerLens model with the
# set plugged in (its hooks resolve), its transcoder activations and a whole attribution.
CIRCUIT_TRACER_SCRIPT = r"""
import sys, types
import torch
from safetensors.torch import load_file, save_file
from circuit_tracer import attribute
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
from circuit_tracer.replacement_model.replacement_model_transformerlens import (
    TransformerLensReplacementModel,
)
from transformer_lens import HookedTransformerConfig

folder, inputs, out = sys.argv[1:4]
parent, name = folder.rsplit("/", 1)
cpu = torch.device("cpu")
ts, config = load_transcoder_from_hub(name, cache_dir=parent, device=cpu, dtype=torch.float32)
x = load_file(inputs)["x"]
res = {"skip": torch.tensor(ts.skip_connection)}
with torch.no_grad():
    for i, tc in enumerate(ts):
        acts = tc.encode(x[i])
        res[f"enc{i}"] = acts
        res[f"dec{i}"] = tc.decode(acts, x[i])
        res[f"jump{i}"] = torch.tensor(hasattr(tc.activation_function, "threshold"))
    res["recon"] = ts.compute_attribution_components(x)["reconstruction"]
torch.manual_seed(0)
n, d = x.shape[0], x.shape[-1]
cfg = HookedTransformerConfig(n_layers=n, d_model=d, n_ctx=16, d_head=4, n_heads=d // 4,
    d_mlp=2 * d, d_vocab=50, act_fn="silu", normalization_type="RMS", gated_mlp=True,
    positional_embedding_type="rotary", rotary_dim=4, device="cpu")
model = TransformerLensReplacementModel.from_config(cfg, ts)
toks = torch.randint(1, 50, (1, 7))
toks[0, 0] = 0
_, feats = model.get_activations(toks)
hooks = [f"blocks.{i}.{ts.feature_input_hook}" for i in range(n)]
_, cache = model.run_with_cache(toks, names_filter=lambda h: h in hooks)
res["model_acts"] = feats
res["model_in"] = torch.stack([cache[h][0] for h in hooks])
model.tokenizer = types.SimpleNamespace(all_special_ids=[0], bos_token_id=0, pad_token_id=0,
    eos_token_id=0, padding_side="right", vocab_size=50, decode=lambda i: f"t{i}")
graph = attribute(toks[0], model, max_n_logits=3, batch_size=16, verbose=False)
res["graph_features"] = torch.tensor(graph.active_features.shape[0])
save_file({k: v.contiguous() for k, v in res.items()}, out)
print("config", config["feature_input_hook"], config["feature_output_hook"], config["scan"])
"""


@pytest.mark.parametrize("skip, inp", [(True, "ln2"), (False, "resid_mid")])
def test_circuit_tracer_loads_our_set(tmp_path, skip, inp):
    python = _circuit_tracer_python()
    if python is None:
        pytest.skip(
            "circuit-tracer's venv is missing: python3 -m venv .venv-circuit-tracer && "
            ".venv-circuit-tracer/bin/pip install torch==2.13.0 circuit-tracer==0.5.0"
        )
    saes = transcoder_set(skip, inp)
    path = export_circuit_tracer(saes, tmp_path / "cache" / "ours")
    torch.manual_seed(4)
    x = torch.randn(len(saes), 9, 16) * 2
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    done = subprocess.run([python, "-c", CIRCUIT_TRACER_SCRIPT, str(path),
                           str(tmp_path / "x.safetensors"), str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    hooks = "mlp.hook_in" if inp == "ln2" else "hook_resid_mid"
    assert f"config {hooks} mlp.hook_out ours" in done.stdout
    res = load_file(str(tmp_path / "out.safetensors"))
    assert bool(res["skip"]) == skip
    with torch.no_grad():
        for i, sae in enumerate(saes):
            assert bool(res[f"jump{i}"]) == (sae.cfg.architecture != "relu")
            acts = sae.dense_activations(x[i])
            assert (acts > 0).any() and (acts == 0).any()
            torch.testing.assert_close(res[f"enc{i}"], acts, rtol=1e-5, atol=1e-5)
            x_hat = sae(x[i]).x_hat
            torch.testing.assert_close(res[f"dec{i}"], x_hat, rtol=1e-5, atol=1e-5)
            # attribution's sparse path zeroes position 0's features (its BOS)
            torch.testing.assert_close(res["recon"][i, 1:], x_hat[1:], rtol=1e-5, atol=1e-5)
            # in a model: the features it reads at its input hook are ours of that input
            # (position 0's zeroed there too)
            mine = sae.dense_activations(res["model_in"][i])
            assert (mine[1:] > 0).any()
            assert not res["model_acts"][i, 0].any()
            torch.testing.assert_close(res["model_acts"][i, 1:], mine[1:], rtol=1e-4, atol=1e-5)
    assert int(res["graph_features"]) > 0


# ---- the CLI -------------------------------------------------------------------------------


def run(*args):
    from saefeat.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output.strip()


def test_cli_exports_a_transcoder_set(settings, tmp_path):
    for i, sae in enumerate(transcoder_set(True, "ln2", archs=("relu", "jumprelu"))):
        sae.save(settings.saes_dir / f"tc{i}")
    random_sae("jumprelu").save(settings.saes_dir / "plain")
    code, out = run("export", "--sae", "tc0,tc1", "--to", "circuit-tracer",
                    "--out", str(tmp_path / "ct"))  # fmt: skip
    assert code == 0, out
    assert {p.name for p in (tmp_path / "ct").iterdir()} == {
        "config.yaml", "layer_0.safetensors", "layer_1.safetensors"
    }  # fmt: skip
    code, out = run("export", "--sae", "plain", "--to", "circuit-tracer",
                    "--out", str(tmp_path / "no"))  # fmt: skip
    assert code == 2 and out.startswith("error: hook_out: ") and "\n" not in out, out
    code, out = run("export", "--sae", "tc0", "--to", "saelens", "--out", str(tmp_path / "sl"))
    assert code == 2 and "hook_out" in out


def test_cli_round_trips_a_sparsify_transcoder(settings, tmp_path):
    sae = random_transcoder(layer=2)
    sae.save(settings.saes_dir / "orig")
    code, out = run("export", "--sae", "orig", "--to", "sparsify", "--out", str(tmp_path / "sp"))
    assert code == 0, out
    _strip_side_keys(tmp_path / "sp")  # as sparsify's own files: no hooks, no model
    code, out = run("import", str(tmp_path / "sp"), "--id", "back", "--model", "m")
    assert code == 2 and "hook_out" in out
    code, out = run("import", str(tmp_path / "sp"), "--id", "back", "--model", "m",
                    "--hook", sae.cfg.hook, "--hook-out", sae.cfg.hook_out)  # fmt: skip
    assert code == 0, out
    back = load_sae(settings.saes_dir / "back")
    assert back.cfg.hook_out == "blocks.2.hook_mlp_out" and back.cfg.skip_connection
    x = torch.randn(5, 12)
    torch.testing.assert_close(back(x).x_hat, sae(x).x_hat)
    from saefeat.storage.catalog.db import catalog_session
    from saefeat.storage.catalog.models import SAE

    with catalog_session(settings) as s:  # listed as a transcoder, with both hooks
        row = s.get(SAE, "back")
        assert (row.hook_name, row.hook_out_name) == (sae.cfg.hook, "blocks.2.hook_mlp_out")


def test_a_circuit_tracer_set_covers_every_layer_of_the_model(tmp_path):
    """circuit-tracer replaces every MLP: layers 0..1 of a 3-layer model load there, then
    fail at layer 2 (issue 24 review), so the export refuses them."""
    saes = [random_transcoder("relu", layer=i, seed=i) for i in range(2)]
    with pytest.raises(SpecError) as e:
        export_circuit_tracer(saes, tmp_path / "partial", n_layers=3)
    assert e.value.field == "sae" and "[2]" in e.value.message
    assert export_circuit_tracer(saes, tmp_path / "whole", n_layers=2).is_dir()
