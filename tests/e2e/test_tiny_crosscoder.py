"""A crosscoder downstream of training, on two tiny Llamas of one tokenizer (issue 24 items
3 and 5): a paired harvest, a crosscoder over both models' layer, indexed over the two
sets concatenated (norms, relative norm and class from its decoder; projections of each
feature's dominant row through model A; no measured effect), served by the API (filter
by class, sort by relative norm) and the pages, explained offline (no Patchscope),
exported to the Neuronpedia layout, and refused with a 422 naming the field wherever one
model at one hook must run (live encoding, steering, contrasts, Patchscope alone)."""

from __future__ import annotations

import gzip
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select

from saefeat.api.app import create_app
from saefeat.config import Settings, get_settings
from saefeat.errors import SpecError
from saefeat.features.vocab import token_strings, vocab_projections
from saefeat.lm import cached_model
from saefeat.pipeline import run_harvest, run_index, run_train
from saefeat.sae import load_sae
from saefeat.sae.crosscoder import (
    decoder_norms,
    dominant_rows,
    in_training_units,
    relative_norm,
    sharing,
    source_scales,
)
from saefeat.specs import ContrastSpec, ExplainSpec, HarvestSpec, IndexSpec, TrainSpec
from saefeat.storage.catalog import feature_reads, queries
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import Feature, Job, Label
from saefeat.storage.catalog.neuronpedia import export_neuronpedia

HOOK = "blocks.2.hook_resid_post"
LOWER = "blocks.1.hook_resid_post"  # the layers crosscoder's other source
D_SAE = 128


@pytest.fixture(scope="module")
def cc(tmp_path_factory, tiny_llama, tiny_llama_b, ray_session):
    """A paired harvest of models A and B, a crosscoder over both, indexed."""
    home = tmp_path_factory.mktemp("crosscoder")
    patch = pytest.MonkeyPatch()
    patch.setenv("SAEFEAT_HOME", str(home / "home"))
    patch.setenv("SAEFEAT_CORPUS_ROOTS", json.dumps([str(home)]))
    patch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    settings = Settings()
    try:
        harvest = run_harvest(
            HarvestSpec(model=str(tiny_llama), paired_model=str(tiny_llama_b),
                        hooks=[HOOK, LOWER],
                        ctx_len=32, token_budget=32 * 48, contexts_per_shard=8,
                        model_dtype="float32"),
            settings=settings,
        )  # fmt: skip
        a, b = harvest.activation_set, harvest.paired.activation_set
        train = run_train(
            TrainSpec(activation_set=a.id, sources=[{"hook": HOOK},
                      {"activation_set": b.id, "hook": HOOK}], d_sae=D_SAE, k=8,
                      batch_size=64, epochs=3, lr=3e-3),
            settings=settings,
        )  # fmt: skip
        index = run_index(IndexSpec(sae=train.sae_id, n_examples=5, window=3), settings=settings)
        layers = run_train(  # a crosscoder over two layers of model A
            TrainSpec(activation_set=a.id, sources=[{"hook": LOWER}, {"hook": HOOK}], d_sae=64,
                      k=4, batch_size=64, epochs=2, lr=3e-3),
            settings=settings,
        )  # fmt: skip
        run_index(IndexSpec(sae=layers.sae_id, n_examples=3, window=3, umap=False),
                  settings=settings)  # fmt: skip
        yield SimpleNamespace(settings=settings, a=a, b=b, sae_id=train.sae_id,
                              index=index.index, model_a=str(tiny_llama),
                              model_b=str(tiny_llama_b), home=home,
                              layers_id=layers.sae_id)  # fmt: skip
    finally:
        patch.undo()
        get_settings.cache_clear()


def _checkpoint(cc, sae_id: str | None = None):
    sae = load_sae(cc.settings.saes_dir / (sae_id or cc.sae_id))
    W = sae.W_dec.detach()  # norms compare in training units (each source's scale)
    norms = decoder_norms(in_training_units(W, sae.cfg.source_widths, source_scales(sae.cfg)),
                          sae.cfg.source_widths)  # fmt: skip
    return sae, W, norms, relative_norm(norms)


def test_the_catalog_row_is_a_crosscoder_of_both_models(cc):
    with TestClient(create_app(cc.settings)) as client:
        body = client.get(f"/v1/saes/{cc.sae_id}").json()
    assert body["kind"] == "crosscoder" and body["n_features_indexed"] == D_SAE
    assert [(s["activation_set"], s["model"], s["hook"]) for s in body["sources"]] == [
        (cc.a.id, cc.model_a, HOOK), (cc.b.id, cc.model_b, HOOK)]  # fmt: skip


@pytest.mark.parametrize("which", ["models", "layers"])
def test_stored_norms_relative_norms_and_classes_are_the_checkpoints(cc, which):
    sae_id = cc.sae_id if which == "models" else cc.layers_id
    sae, _, norms, rel = _checkpoint(cc, sae_id)
    with catalog_session(cc.settings) as s:
        rows = s.execute(
            select(Feature.index, Feature.decoder_norms, Feature.relative_norm, Feature.sharing)
            .where(Feature.sae_id == sae_id).order_by(Feature.index)
        ).all()  # fmt: skip
    assert len(rows) == sae.cfg.d_sae
    for i, stored_norms, stored_rel, stored_class in rows:
        np.testing.assert_allclose(stored_norms, norms[i].tolist(), rtol=1e-5)
        assert stored_rel == pytest.approx(float(rel[i]), rel=1e-5, abs=1e-7)
        assert stored_class == sharing(float(rel[i]))


def test_examples_encode_both_sets_concatenated(cc):
    """A stored top example is the crosscoder's activation on the concatenation of both
    sets' stored rows at its context and position (A's alone would not even encode)."""
    sae, *_ = _checkpoint(cc)
    checked = 0
    with catalog_session(cc.settings) as s:
        page = queries.list_features(s, cc.sae_id, sort="max_activation", limit=5)
        for f in page.items:
            examples = [e for e in feature_reads.feature_examples(s, f.id) if e.kind == "top"]
            assert all(e.position > 0 for e in examples)  # the token rule: no position 0
            e = examples[0]
            assert abs(e.activation - f.max_activation) < 1e-4
            shard = e.context_index // cc.a.contexts_per_shard
            c0 = cc.a.shard_contexts(shard)[0]
            row = (e.context_index - c0) * cc.a.ctx_len + e.position
            x = torch.cat([cc.a.read_shard(shard, HOOK)[row], cc.b.read_shard(shard, HOOK)[row]])
            with torch.no_grad():
                got = float(sae.dense_activations(x[None].float())[0, f.index])
            assert got == pytest.approx(e.activation, rel=1e-3, abs=1e-4)
            tokens = cc.a.tokens(e.context_index, e.context_index + 1)[0]
            assert e.token_ids[e.focus] == int(tokens[e.position])
            checked += 1
    assert checked == 5


def test_indexing_in_this_process_agrees_with_the_ray_tasks(cc):
    from saefeat.training.trainer import open_complete_set
    from saefeat.workers.index import index_sae
    from saefeat.workers.runtime import work_here

    with work_here():
        spec = IndexSpec(sae=cc.sae_id, n_examples=5, window=3, umap=False)
        aset = open_complete_set(cc.settings, cc.a.id)
        here = index_sae(spec, sae_path=cc.settings.saes_dir / cc.sae_id, aset=aset,
                         settings=cc.settings)  # fmt: skip
    np.testing.assert_allclose(here.index.density, cc.index.density)
    np.testing.assert_allclose(here.index.max_activation, cc.index.max_activation, rtol=1e-5)
    assert here.index.sharing == cc.index.sharing


def test_projections_read_each_features_dominant_row_through_model_a(cc):
    sae, W, norms, _ = _checkpoint(cc)
    lm = cached_model(cc.model_a, None, "cpu")
    W_U, scale = lm.unembedding()
    strings = token_strings(lm.tokenizer, W_U.shape[0])
    got = {p.feature_index: p for p in cc.index.projections}
    n = IndexSpec(sae=cc.sae_id).n_vocab
    want = vocab_projections(
        dominant_rows(W, sae.cfg.source_widths, source_scales(sae.cfg)), W_U, scale, strings, n
    )
    b_heavy = torch.nonzero(norms[:, 1] > norms[:, 0]).flatten().tolist()
    a_heavy = torch.nonzero(norms[:, 0] >= norms[:, 1]).flatten().tolist()
    assert b_heavy and a_heavy
    for f in b_heavy[:3] + a_heavy[:3]:
        assert got[f].top_ids == want[f].top_ids
        np.testing.assert_allclose(got[f].top_values, want[f].top_values, rtol=1e-4, atol=1e-5)


def test_no_measured_effect_and_a_debiased_projection_for_every_feature(cc):
    methods = [e.method for e in cc.index.effects]
    assert "measured" not in methods and methods.count("debiased") == D_SAE


def test_the_api_filters_by_class_and_sorts_by_relative_norm(cc):
    _, _, _, rel = _checkpoint(cc)
    with TestClient(create_app(cc.settings)) as client:
        url = f"/v1/saes/{cc.sae_id}/features"
        listed = {}
        for cls in ("a_only", "shared", "b_only"):
            items = client.get(url, params={"sharing": cls, "artifacts": "include",
                                            "limit": 500}).json()["items"]  # fmt: skip
            assert all(i["sharing"] == cls for i in items)
            listed[cls] = {i["index"] for i in items}
        assert sum(len(v) for v in listed.values()) == D_SAE
        for f in listed["shared"] | listed["a_only"]:
            assert sharing(float(rel[f])) in ("shared", "a_only")

        seen, cursor = [], None
        while True:
            params = {"sort": "relative_norm", "order": "asc", "limit": 40, "artifacts": "include"}
            page = client.get(url, params=params | ({"cursor": cursor} if cursor else {})).json()
            seen += page["items"]
            if not (cursor := page["next_cursor"]):
                break
        keys = [(i["relative_norm"], i["index"]) for i in seen]  # ties by index
        assert len(seen) == D_SAE and keys == sorted(keys)

        feature = client.get(f"{url}/{seen[0]['index']}").json()
        assert feature["decoder_norms"] == seen[0]["decoder_norms"]
        assert len(feature["decoder_norms"]) == 2
        assert feature["relative_norm"] == pytest.approx(float(rel[seen[0]["index"]]), rel=1e-5)
        assert feature["effects"]["measured"] == {"up": [], "down": []}
        bad = client.get(url, params={"sharing": "both"})
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "sharing"


def _feature_links(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td><a href="/saes/[^/]+/features/(\d+)">', html)]


def test_pages_name_the_sources_and_sort_and_filter_by_relative_norm(cc):
    with TestClient(create_app(cc.settings)) as client:
        page = client.get(f"/saes/{cc.sae_id}")
        assert page.status_code == 200, page.text
        assert '<span id="sae-kind">crosscoder</span>' in page.text
        for name in ("model A", "model B", cc.model_a, cc.model_b, HOOK):
            assert name in page.text
        assert 'id="sort-relative-asc"' in page.text and 'data-sharing="b_only"' in page.text

        cls = max(("a_only", "shared", "b_only"), key=lambda c: sum(
            1 for x in cc.index.sharing if x == c))  # fmt: skip
        params = {"sort": "relative_norm", "order": "desc", "sharing": cls}
        sorted_page = client.get(f"/saes/{cc.sae_id}", params=params)
        assert sorted_page.status_code == 200
        api = client.get(f"/v1/saes/{cc.sae_id}/features", params=params | {"limit": 100})
        assert _feature_links(sorted_page.text) == [i["index"] for i in api.json()["items"]]
        assert _feature_links(sorted_page.text)  # the most common class has features
        assert f"{cls} only" in sorted_page.text

        f = int(np.argmax(cc.index.max_activation))
        feature = client.get(f"/saes/{cc.sae_id}/features/{f}")
        assert feature.status_code == 200, feature.text
        assert 'id="decoder-norms"' in feature.text and "model B" in feature.text
        assert f'id="sharing">{cc.index.sharing[f]}<' in feature.text
        assert f"{cc.index.relative_norms[f]:.3f}" in feature.text
        assert 'id="steer-form"' not in feature.text and 'id="no-measured-effect"' in feature.text


def _field(response, status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert "a crosscoder spans 2 sources (models)" in body["detail"], body
    return body["errors"][0]["field"]


def test_a_layers_crosscoders_pages_name_its_hooks(cc):
    with TestClient(create_app(cc.settings)) as client:
        page = client.get(f"/saes/{cc.layers_id}")
        assert page.status_code == 200 and '<span id="sae-kind">crosscoder</span>' in page.text
        assert f"<th>{LOWER}</th>" in page.text and f"<th>{HOOK}</th>" in page.text
        feature = client.get(f"/saes/{cc.layers_id}/features/0")
        assert feature.status_code == 200 and 'id="decoder-norms"' in feature.text
        live = client.post(f"/v1/saes/{cc.layers_id}/activations", json={"text": "x = 1"})
    assert live.status_code == 422 and "2 sources (layers)" in live.json()["detail"]


def test_one_model_one_hook_features_refuse_it_naming_the_field(cc):
    from saefeat.analysis.contrast import check_inputs

    with catalog_session(cc.settings) as s:
        key = create_api_key(s, "cc", ["read", "jobs", "explain"])
        s.commit()
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(cc.settings)) as client:
        live = client.post(f"/v1/saes/{cc.sae_id}/activations", json={"text": "def f(x):"})
        assert _field(live) == "sae_id" and "live encoding runs one model" in live.json()["detail"]
        steer = client.post(f"/v1/saes/{cc.sae_id}/steer", json={
            "prompt": "def f(x):", "features": [{"index": 0, "strength": 1.0}],
            "units": "raw", "max_new_tokens": 2})  # fmt: skip
        assert _field(steer) == "sae_id" and "steering runs one model" in steer.json()["detail"]
        contrast = client.post("/v1/contrasts", headers=auth,
                               json={"sae": cc.sae_id, "a": cc.a.id, "b": cc.b.id})  # fmt: skip
        assert _field(contrast) == "sae"
        patchscope = client.post(f"/v1/saes/{cc.sae_id}/explanations", headers=auth,
                                 json={"explainer": "patchscope", "features": [0]})  # fmt: skip
        assert _field(patchscope) == "explainer"
    with catalog_session(cc.settings) as s:  # refused before a job row
        assert not s.scalars(select(Job).where(Job.kind.in_(["contrast", "explain"]))).all()
    with catalog_session(cc.settings) as s, pytest.raises(SpecError) as e:
        check_inputs(ContrastSpec(sae=cc.sae_id, a=cc.a.id, b=cc.b.id), cc.settings, s)
    assert e.value.field == "sae"


def test_offline_explanations_work_and_patchscope_is_skipped(cc):
    from saefeat.workers.explain import run_explain

    live = np.flatnonzero(cc.index.density > 0)[:3].tolist()
    spec = ExplainSpec(sae=cc.sae_id, features=live, explainer="offline,patchscope",
                       scorers=["activation", "keyword"], pool_contexts=16, batch_features=4,
                       n_explain=4)  # fmt: skip
    result = run_explain(spec, settings=cc.settings)
    assert result.failed == {} and result.explained == len(live)
    with catalog_session(cc.settings) as s:
        authors = s.scalars(
            select(Label.author).join(Feature, Feature.id == Label.feature_id)
            .where(Feature.sae_id == cc.sae_id, Label.source == "auto")
        ).all()  # fmt: skip
    assert sorted(authors) == ["offline"] * len(live)
    again = run_explain(spec, settings=cc.settings)  # nothing left: patchscope is not owed
    assert again.skipped_existing == len(live) and again.explained == 0


def test_neuronpedia_export_carries_the_sources_and_each_features_norms(cc, tmp_path):
    with catalog_session(cc.settings) as s:
        folder = export_neuronpedia(s, cc.sae_id, tmp_path / "np")
        sae = queries.get_sae(s, cc.sae_id)
        stored = {i: (n, r, c) for i, n, r, c in s.execute(
            select(Feature.index, Feature.decoder_norms, Feature.relative_norm, Feature.sharing)
            .where(Feature.sae_id == cc.sae_id))}  # fmt: skip
    assert folder.name == f"2-saefeat-crosscoder-{D_SAE}"
    source = json.loads((folder / "source.jsonl").read_text())
    meta = source["saelensConfig"]["saefeat"]
    assert meta["kind"] == "crosscoder" and meta["sources"] == sae.cfg["sources"]
    assert json.loads((folder / "model.jsonl").read_text())["dimension"] == cc.a.d_model
    assert "crosscoder of" in json.loads((folder / "sourceset.jsonl").read_text())["description"]
    side = [json.loads(line) for p in sorted((folder / "saefeat").iterdir())
            for line in gzip.decompress(p.read_bytes()).decode().splitlines()]  # fmt: skip
    assert len(side) == D_SAE
    for record in side:
        norms, rel, cls = stored[record["index"]]
        assert (record["decoder_norms"], record["relative_norm"], record["sharing"]) == (
            norms, rel, cls)  # fmt: skip
