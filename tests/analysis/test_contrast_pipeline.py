"""Contrast end to end on the tiny Llama: harvest two corpora (the built-in one and the
model's own continuations), train an SAE on the first, contrast them as a job over HTTP,
read the results and the page, the CLI, and refuse bad input storing nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from saefeat.analysis.contrast_demo import write_demo_corpora
from saefeat.analysis.contrast_docs import document_layout
from saefeat.api.app import create_app
from saefeat.errors import SpecError
from saefeat.pipeline import run_harvest, run_index, run_train
from saefeat.specs import ContrastSpec, HarvestSpec, IndexSpec, TrainSpec
from saefeat.storage.catalog import labels, queries
from saefeat.storage.catalog.contrasts import ContrastFeature, ContrastRun
from saefeat.storage.catalog.db import catalog_session
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import Job
from saefeat.workers.contrast import run_contrast

HOOK = "blocks.2.hook_resid_post"


def _harvest(model, corpus, hooks=(HOOK,), budget=32 * 120):
    return HarvestSpec(
        model=str(model), hooks=list(hooks), corpus=[corpus], ctx_len=32,
        token_budget=budget, contexts_per_shard=8, model_dtype="float32",
    )  # fmt: skip


@pytest.fixture
def pair(settings, ray_session, tiny_llama, tmp_path):
    """(sae id, human set, generated set)."""
    human, generated = write_demo_corpora(
        tmp_path / "corpora", model=str(tiny_llama), max_prompts=80, max_new_tokens=24,
        batch_size=40, prompt_tokens=8,
    )  # fmt: skip
    a = run_harvest(_harvest(tiny_llama, str(human)), settings=settings).activation_set
    b = run_harvest(_harvest(tiny_llama, str(generated)), settings=settings).activation_set
    train = run_train(
        TrainSpec(activation_set=a.id, d_sae=128, k=8, batch_size=64, epochs=2, lr=3e-3),
        settings=settings,
    )
    return train.sae_id, a, b


def _counts(settings) -> tuple[int, int, int]:
    with catalog_session(settings) as s:
        return tuple(
            s.scalar(select(func.count()).select_from(t))
            for t in (Job, ContrastRun, ContrastFeature)
        )


def test_document_layout_follows_the_recorded_document_starts(pair):
    _, _, generated = pair
    layout = document_layout(generated, window=4, massive=np.zeros(0, np.int64))
    ctx = generated.ctx_len
    unit = layout.unit.reshape(-1, ctx)
    assert (np.diff(layout.unit) >= 0).all()  # documents are contiguous runs
    offsets = generated.group["doc_offset"][:]
    # A context that starts inside a document (offset > 0) continues the unit before it.
    assert (unit[1:, 1][offsets[1:] > 0] == unit[:-1, -1][offsets[1:] > 0]).all()
    assert (unit[1:, 1][offsets[1:] == 0] == unit[:-1, -1][offsets[1:] == 0] + 1).all()
    assert not layout.counted.reshape(-1, ctx)[:, 0].any()  # position 0 never counts
    per_unit = np.bincount(layout.unit[layout.in_window], minlength=layout.n_units)
    assert per_unit.max() == 4


def test_contrast_job_over_http_then_page_and_cli(pair, settings):
    sae_id, a, b = pair
    app = create_app(settings)
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "admin", ["admin"])
        s.commit()
    auth = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k1"}
    body = {"sae": sae_id, "a": a.id, "b": b.id, "top": 5, "classifier_features": 8}
    with TestClient(app) as client:
        r = client.post("/v1/contrasts", json=body, headers=auth)
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["contrast_id"] == ContrastSpec(**body).contrast_id()
        again = client.post("/v1/contrasts", json=body, headers=auth)
        assert again.status_code == 202 and again.json()["job_id"] == accepted["job_id"]
        other = client.post("/v1/contrasts", json={**body, "top": 6}, headers=auth)
        assert other.status_code == 422 and "Idempotency-Key" in other.text
        app.state.job_runner.wait(accepted["job_id"], timeout=300)

        out = client.get(accepted["location"]).json()
        assert out["status"] == "succeeded", out
        assert all(f["label"] is None for f in out["top_a"] + out["top_b"])  # not indexed
        run_index(IndexSpec(sae=sae_id, n_examples=2, n_quantile_bins=0), settings=settings)
        with catalog_session(settings) as s:
            feature = queries.get_feature(s, sae_id, out["top_a"][0]["feature_index"])
            labels.add_label(s, feature, text="doc prose", source="human", author="t")
            s.commit()
        out = client.get(accepted["location"]).json()
        assert out["top_a"][0]["label"] == "doc prose"
        assert all(f["label"] is None for f in out["top_a"][1:] + out["top_b"])
        assert out["n_docs_a"] > 10 and out["n_docs_b"] > 10
        # Random-model text and documentation differ at every feature the SAE learnt.
        assert out["top_a"] and out["top_b"]
        assert len(out["top_a"]) <= 5
        first = out["top_a"][0]
        assert first["q"] < 0.05 and first["log_ratio"] > 0
        assert first["url"] == f"/saes/{sae_id}/features/{first['feature_index']}"
        ratios = [f["log_ratio"] for f in out["top_a"]]
        assert ratios == sorted(ratios, reverse=True)
        assert out["auroc"] is not None and out["auroc"] > 0.9
        assert len(out["classifier_features"]) == 8
        assert len(client.get(accepted["location"], params={"top": 2}).json()["top_b"]) <= 2

        page = client.get(f"/contrasts/{accepted['contrast_id']}")
        assert page.status_code == 200
        assert "Fires more in A" in page.text and "Fires more in B" in page.text
        assert f'href="{first["url"]}"' in page.text
        assert "doc prose" in page.text
        assert client.get("/contrasts/ct-nope").status_code == 404
        missing = client.get("/v1/contrasts/ct-nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")

    from saefeat.cli import app as cli

    result = CliRunner().invoke(
        cli, ["contrast", "--sae", sae_id, "--a", a.id, "--b", b.id, "--top", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "fires more in A" in result.output and "AUROC" in result.output


def test_bad_input_names_the_field_and_stores_nothing(pair, settings, tiny_llama, tmp_path):
    sae_id, a, b = pair
    other_model = tmp_path / "other-llama"  # the same weights under another name
    shutil.copytree(tiny_llama, other_model)
    corpus = str(tmp_path / "corpora" / "human.jsonl")
    wrong_model = run_harvest(_harvest(other_model, corpus), settings=settings).activation_set
    wrong_hook = run_harvest(
        _harvest(tiny_llama, corpus, hooks=["blocks.1.hook_mlp_out"]), settings=settings
    ).activation_set
    empty = run_harvest(_harvest(tiny_llama, corpus, budget=32 * 8), settings=settings)
    for shard in empty.activation_set.committed_shards():
        empty.activation_set.drop_shard(shard)
    # A plain-text file is one document: nothing to compare documents with.
    text = tmp_path / "corpora" / "one.txt"
    text.write_text(" ".join(json.loads(line)["text"] for line in open(corpus)))
    one_doc = run_harvest(_harvest(tiny_llama, str(text), budget=32 * 8), settings=settings)
    before = _counts(settings)
    cases = {
        "b": [(wrong_model.id, "model"), (wrong_hook.id, "hook"),
              (empty.activation_set.id, "no tokens"), ("as-unknown", "no activation set"),
              (one_doc.activation_set.id, "one document")],
    }  # fmt: skip
    for set_id, words in cases["b"]:
        with pytest.raises(SpecError, match=words) as err:
            run_contrast(ContrastSpec(sae=sae_id, a=a.id, b=set_id), settings=settings)
        assert err.value.field == "b"
    with pytest.raises(SpecError) as err:
        run_contrast(ContrastSpec(sae="nope", a=a.id, b=b.id), settings=settings)
    assert err.value.field == "sae"

    app = create_app(settings)
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "admin", ["admin"])
        s.commit()
    before = _counts(settings)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {key}"}
        r = client.post("/v1/contrasts", json={"sae": sae_id, "a": wrong_hook.id, "b": b.id},
                        headers=auth)  # fmt: skip
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["errors"][0]["field"] == "a" and "hook" in r.json()["detail"]
        same = client.post("/v1/contrasts", json={"sae": sae_id, "a": a.id, "b": a.id},
                           headers=auth)  # fmt: skip
        assert same.status_code == 422 and "same set" in same.text
    assert _counts(settings) == before

    from saefeat.cli import app as cli

    result = CliRunner().invoke(
        cli, ["contrast", "--sae", sae_id, "--a", a.id, "--b", wrong_model.id]
    )
    assert result.exit_code == 2 and "b:" in result.output and "model" in result.output
    assert _counts(settings) == before
