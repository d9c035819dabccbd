"""A transcoder downstream of training, on the tiny Llama: indexed (examples from the hook
it reads, measured effects where it writes), explained by Patchscope where it writes,
encoded live, steered over the API, shown on the pages and round-tripped through the
Neuronpedia layout (issue 24 item 5)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from checks import check_examples_recompute
from fastapi.testclient import TestClient

from saefeat.api.app import create_app
from saefeat.config import Settings, get_settings
from saefeat.lm import cached_model, parse_hook, run_to_hooks
from saefeat.pipeline import run_harvest, run_index, run_train
from saefeat.sae import load_sae
from saefeat.specs import ExplainSpec, HarvestSpec, IndexSpec, TrainSpec
from saefeat.storage.catalog import queries
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.neuronpedia import export_neuronpedia
from saefeat.storage.catalog.neuronpedia_import import import_neuronpedia
from saefeat.workers import index as index_worker

READ = "blocks.1.ln2.hook_normalized"
WRITE = "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def transcoder(tmp_path_factory, tiny_llama, ray_session):
    """One trained tiny transcoder, indexed; the measured effects' model calls recorded."""
    home = tmp_path_factory.mktemp("transcoder")
    patch = pytest.MonkeyPatch()
    patch.setenv("SAEFEAT_HOME", str(home / "home"))
    patch.setenv("SAEFEAT_CORPUS_ROOTS", json.dumps([str(home)]))
    get_settings.cache_clear()
    settings = Settings()
    calls: list[dict] = []
    real = index_worker.measured_effects

    def recorded(lm, W_dec, hook, tokens, pairs, strings, n=20, **kwargs):
        calls.append({"hook": hook, "pairs": pairs, "W_dec": W_dec.clone(), "n": n,
                      "hook_acts": kwargs.get("hook_acts")})  # fmt: skip
        out = real(lm, W_dec, hook, tokens, pairs, strings, n, **kwargs)
        calls[-1]["out"] = out
        return out

    patch.setattr(index_worker, "measured_effects", recorded)
    try:
        aset = run_harvest(
            HarvestSpec(model=str(tiny_llama), hooks=[READ, WRITE], ctx_len=32,
                        token_budget=32 * 48, contexts_per_shard=8, model_dtype="float32"),
            settings=settings,
        ).activation_set  # fmt: skip
        train = run_train(
            TrainSpec(activation_set=aset.id, hook=READ, hook_out=WRITE, d_sae=128, k=8,
                      batch_size=64, epochs=3, lr=3e-3),
            settings=settings,
        )  # fmt: skip
        index = run_index(IndexSpec(sae=train.sae_id, n_examples=5, window=3), settings=settings)
        yield SimpleNamespace(settings=settings, aset=aset, sae_id=train.sae_id, index=index,
                              calls=calls, model=str(tiny_llama))  # fmt: skip
    finally:
        patch.undo()
        get_settings.cache_clear()


def test_the_catalog_row_is_a_transcoder(transcoder):
    with catalog_session(transcoder.settings) as s:
        row = queries.get_sae(s, transcoder.sae_id)
        assert (row.hook_name, row.hook_out_name) == (READ, WRITE)
        assert queries.count_features(s, transcoder.sae_id) == 128


def test_examples_and_statistics_encode_the_hook_it_reads(transcoder):
    t = transcoder
    index = t.index.index
    assert index.d_sae == 128 and (index.density > 0).any()
    # The stored top examples recompute from the model at the READ hook through the encoder.
    check_examples_recompute(t.settings, t.aset, t.sae_id, t.model, torch.float32)


def _mlp_removed_drop(lm, W_dec, tokens, pairs, feature: int) -> torch.Tensor:
    """The measured effect of one feature computed directly: for each of its pairs, the
    context's prefix up to the focus, the MLP's output (blocks.1.mlp) at the focus less
    a_f * W_dec[f], and the drop in next-token probability there; the mean over pairs."""
    mlp = lm.module_for(parse_hook(WRITE))
    assert mlp is lm.blocks[1].mlp
    drops = []
    for i in np.flatnonzero(pairs.features == feature):
        ctx, pos, a = int(pairs.contexts[i]), int(pairs.positions[i]), float(pairs.activations[i])
        ids = torch.from_numpy(np.asarray(tokens[ctx, : pos + 1], dtype=np.int64))[None]
        with lm.exclusive(), torch.no_grad():
            clean = lm.model(input_ids=ids).logits[0, -1].float().softmax(-1)

            def remove(module, args, out, a=a):
                out = out.clone()
                out[0, -1] -= a * W_dec[feature].to(out.dtype)
                return out

            handle = mlp.register_forward_hook(remove)
            try:
                removed = lm.model(input_ids=ids).logits[0, -1].float().softmax(-1)
            finally:
                handle.remove()
        drops.append(clean - removed)
    return torch.stack(drops).mean(0)


def test_measured_effects_remove_the_decoder_row_at_the_mlp_output(transcoder):
    t = transcoder
    (call,) = t.calls
    assert call["hook"] == WRITE  # where the decoder writes, not the READ hook
    measured = {e.feature_index: e for e in t.index.index.effects if e.method == "measured"}
    assert set(measured) == set(np.flatnonzero(t.index.index.density > 0).tolist())
    lm = cached_model(t.model, None, "cpu")
    tokens = t.aset.tokens()
    counts = np.bincount(call["pairs"].features)
    checked = 0
    for f in np.argsort(-counts)[:3].tolist():  # the features with the most pairs
        want = _mlp_removed_drop(lm, call["W_dec"], tokens, call["pairs"], f)
        got = measured[f]
        top = want.topk(5)
        assert got.up_ids[:3] == top.indices[:3].tolist(), (f, got.up_ids, top)
        np.testing.assert_allclose(got.up_values[:5], top.values.numpy(), rtol=1e-3, atol=1e-6)
        checked += 1
    assert checked == 3


def test_patchscope_adds_the_decoder_row_at_the_hook_it_writes(transcoder):
    from saefeat.interp.catalog_io import prepare
    from saefeat.interp.patchscope import PatchscopeExplainer

    t = transcoder
    explainer = PatchscopeExplainer(None)
    spec = ExplainSpec(sae=t.sae_id, features=[int(np.argmax(t.index.index.max_activation))])
    plan = prepare(spec, t.settings, explainer)
    assert plan.hook == READ and plan.hook_out == WRITE
    subject = plan.subject()
    assert subject is not None and subject.hook == WRITE


def test_live_encoding_reads_the_input_hook(transcoder):
    t = transcoder
    text = "def add(a, b):\n    return a + b\n"
    with TestClient(create_app(t.settings)) as client:
        response = client.post(f"/v1/saes/{t.sae_id}/activations", json={"text": text, "top_n": 3})
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["hook"] == READ
    lm = cached_model(t.model, None, "cpu")
    sae = load_sae(t.settings.saes_dir / t.sae_id)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids
    x = run_to_hooks(lm, ids, [parse_hook(READ)])[READ][0]
    with torch.no_grad():
        dense = sae.dense_activations(x.float())
    compared = 0
    for token in out["tokens"]:
        for f in token["features"]:
            got, want = f["activation"], float(dense[token["position"], f["index"]])
            assert abs(got - want) <= 1e-4 * max(1.0, abs(want))
            compared += 1
    assert compared > 0


def test_steering_over_the_api_edits_the_output_hook(transcoder):
    t = transcoder
    body = {"prompt": "def add(a, b):", "features": [{"index": 3, "strength": 0.0}],
            "method": "add", "units": "raw", "max_new_tokens": 4}  # fmt: skip
    with TestClient(create_app(t.settings)) as client:
        zero = client.post(f"/v1/saes/{t.sae_id}/steer", json=body)
        clamp = client.post(f"/v1/saes/{t.sae_id}/steer",
                            json=body | {"method": "clamp", "features": [
                                {"index": 3, "strength": 50.0}]})  # fmt: skip
    assert zero.status_code == 200, zero.text
    assert clamp.status_code == 200, clamp.text
    for out in (zero.json(), clamp.json()):
        assert out["hook"] == WRITE and out["read_hook"] == READ
    assert zero.json()["steered"]["token_ids"] == zero.json()["default"]["token_ids"]


def test_pages_name_both_hooks(transcoder):
    t = transcoder
    feature = int(np.argmax(t.index.index.max_activation))
    with TestClient(create_app(t.settings)) as client:
        sae_page = client.get(f"/saes/{t.sae_id}")
        feature_page = client.get(f"/saes/{t.sae_id}/features/{feature}")
        summary = client.get(f"/v1/saes/{t.sae_id}").json()
        search = client.get("/")
    for page in (sae_page, feature_page):
        assert page.status_code == 200, page.text
        assert READ in page.text and WRITE in page.text and "transcoder" in page.text
    assert 'id="hook-in">' + READ in sae_page.text and 'id="hook-out">' + WRITE in sae_page.text
    assert 'id="hook-out">' + WRITE in feature_page.text
    assert summary["kind"] == "transcoder" and summary["hook_out"] == WRITE
    assert f"transcoder {READ} → {WRITE}" in search.text


def test_neuronpedia_round_trip_keeps_the_output_hook(transcoder, tmp_path):
    t = transcoder
    with catalog_session(t.settings) as s:
        folder = export_neuronpedia(s, t.sae_id, tmp_path / "np")
    assert folder.name == "1-saefeat-transcoder-128"
    source = json.loads((folder / "source.jsonl").read_text())
    cfg = source["saelensConfig"]
    assert cfg["hook_name"] == READ and cfg["hook_name_out"] == WRITE
    assert cfg["hook_layer_out"] == 1 and cfg["saefeat"]["hook_out"] == WRITE
    sourceset = json.loads((folder / "sourceset.jsonl").read_text())
    assert sourceset["description"].startswith(f"transcoder {READ} -> {WRITE}")
    with catalog_session(t.settings) as s:
        import_neuronpedia(s, folder, "tc-back")
        back = queries.get_sae(s, "tc-back")
        assert (back.hook_name, back.hook_out_name) == (READ, WRITE)
        assert queries.count_features(s, "tc-back") == 128

    # Without our side record, SAELens's hook_name_out names it; without either, the
    # source set's name says transcoder.
    del cfg["saefeat"]["hook_out"]
    (folder / "source.jsonl").write_text(json.dumps(source) + "\n")
    del cfg["hook_name_out"], cfg["hook_name"]
    bare = tmp_path / "bare"
    (tmp_path / "np").rename(bare)
    source_file = next(bare.rglob("source.jsonl"))
    source_file.write_text(json.dumps(source | {"saelensConfig": cfg}) + "\n")
    with catalog_session(t.settings) as s:
        import_neuronpedia(s, source_file.parent, "tc-bare")
        row = queries.get_sae(s, "tc-bare")
        assert (row.hook_name, row.hook_out_name) == (READ, WRITE)


def test_a_contrast_encodes_the_hook_it_reads(transcoder):
    from saefeat.specs import ContrastSpec
    from saefeat.storage.activations import open_set
    from saefeat.workers.contrast import run_contrast

    t = transcoder
    corpus = t.settings.home.parent / "b.txt"
    corpus.write_text("\n\n".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(24)))
    spec = ContrastSpec(sae=t.sae_id, a=t.aset.id, b_corpus=[str(corpus)], token_budget=32 * 16)
    result = run_contrast(spec, settings=t.settings)
    assert open_set(t.settings.activations_dir, result.spec.b).hooks == [READ]
    assert result.stats is not None
