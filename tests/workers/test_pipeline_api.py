"""Trainings, indexings and pipelines as HTTP jobs, on a real SQLite catalog and a real
local Ray, through TestClient: the chain, reuse, idempotency, and the refusals."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from saefeat.api.app import create_app
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import SAE, Feature, Job, Label

PROBLEM = "application/problem+json"
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def api(settings, tiny_llama, ray_session):
    app = create_app(settings.model_copy(update={"allowed_models": [str(tiny_llama)]}))
    with app.state.sessionmaker() as s:
        admin = create_api_key(s, "admin", ["admin"])
        s.commit()
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        yield app, client


def pipeline_body(tiny_llama, **extra) -> dict:
    harvest = {"model": str(tiny_llama), "hooks": [HOOK], "ctx_len": 16, "token_budget": 16 * 24,
               "contexts_per_shard": 8, "batch_size": 4, "model_dtype": "float32",
               "storage_dtype": "float32"}  # fmt: skip
    train = {"hook": HOOK, "d_sae": 128, "k": 4, "batch_size": 64, "epochs": 2,
             "eval_ce_contexts": 0}  # fmt: skip
    index = {"n_examples": 3, "n_quantile_bins": 2, "per_quantile_bin": 1, "n_neighbours": 2}
    return {"harvest": harvest, "train": train, "index": index, "device": "cpu"} | extra


def rows(app, model) -> int:
    with app.state.sessionmaker() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_pipeline_runs_its_chain_and_reuses_it(api, tiny_llama):
    app, client = api
    body = pipeline_body(tiny_llama)
    r = client.post("/v1/pipelines", json=body, headers={"Idempotency-Key": "p1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    again = client.post("/v1/pipelines", json=body, headers={"Idempotency-Key": "p1"})
    assert again.json()["job_id"] == job_id
    job = app.state.job_runner.wait(job_id, timeout=600)
    assert job.status == "succeeded", job.error
    out = client.get(f"/v1/jobs/{job_id}").json()
    # By default a pipeline explains every feature (offline), with progress in features.
    assert [s["stage"] for s in out["stages"]] == ["harvest", "train", "index", "explain"]
    assert all(s["status"] == "succeeded" for s in out["stages"]), out["stages"]
    assert out["progress_done"] == out["progress_total"] == 4
    assert rows(app, SAE) == 1 and rows(app, Feature) == 128
    explain_job = client.get(f"/v1/jobs/{out['stages'][3]['job_id']}").json()
    with app.state.sessionmaker() as s:
        live = s.scalar(select(func.count()).select_from(Feature).where(Feature.density > 0))
        explained = s.scalar(select(func.count(func.distinct(Label.feature_id)))
                             .where(Label.source == "auto"))  # fmt: skip
    assert explained == live > 0  # every feature that fires has an explanation
    labels = rows(app, Label)
    assert explain_job["progress_done"] == explain_job["progress_total"] == live
    n_jobs = rows(app, Job)  # the pipeline and its four stages
    assert n_jobs == 5

    # The same pipeline again: every stage's result exists, so no stage job but explain
    # runs, and explain finds every feature explained and writes nothing.
    second = client.post("/v1/pipelines", json=body).json()["job_id"]
    done = app.state.job_runner.wait(second, timeout=120)
    assert done.status == "succeeded" and "reused: harvest, train, index" in done.error
    assert rows(app, Job) == n_jobs + 2 and rows(app, SAE) == 1 and rows(app, Feature) == 128
    assert rows(app, Label) == labels

    # Without the explain stage, as before issue 21.
    third = client.post("/v1/pipelines", json=body | {"stages": ["harvest", "train", "index"]})
    done = app.state.job_runner.wait(third.json()["job_id"], timeout=120)
    assert done.status == "succeeded" and "reused: harvest, train, index" in done.error

    # Training and indexing on their own: an already trained SAE is reused.
    train_spec = client.get(
        f"/v1/jobs/{out['stages'][1]['job_id']}").json()["spec"]["specs"][0]  # fmt: skip
    train = client.post("/v1/trainings", json=train_spec | {"device": None})
    assert train.status_code == 202, train.text
    t = app.state.job_runner.wait(train.json()["job_id"], timeout=120)
    assert t.status == "succeeded" and t.error.startswith("already trained")


def test_bad_specs_are_refused_without_a_row(api, tiny_llama):
    app, client = api

    def refused(path: str, body: dict, field: str) -> None:
        r = client.post(path, json=body)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, r.text
        fields = [e["field"] for e in r.json().get("errors") or []]
        assert field in fields or field in r.json()["detail"], r.json()

    refused("/v1/trainings", {"activation_set": "as-0000000000000000"},
            "specs.0.activation_set")  # fmt: skip
    refused("/v1/trainings", {"specs": [{"activation_set": "as-1"}], "device": "cuda"},
            "specs.0.activation_set")  # fmt: skip
    refused("/v1/trainings", {"activation_set": "as-1", "resume_from": "/etc"},
            "specs.0.resume_from")  # fmt: skip
    refused("/v1/indexings", {"sae": "sae-missing"}, "sae")
    # Numbers the job could never use (torch's seed range, one shard in memory) are
    # refused up front, not failed inside the job.
    refused("/v1/trainings", {"activation_set": "as-1", "seed": 10**26}, "specs.0.seed")
    refused("/v1/indexings", {"sae": "sae-x", "batch_contexts": 10**20}, "batch_contexts")
    huge_shards = pipeline_body(tiny_llama)
    huge_shards["harvest"] = huge_shards["harvest"] | {"contexts_per_shard": 10**9}
    refused("/v1/pipelines", huge_shards, "harvest.contexts_per_shard")
    refused("/v1/pipelines", pipeline_body(tiny_llama, device="cuda"), "device")
    refused("/v1/pipelines", pipeline_body(tiny_llama, resources={"trainer": 1}),
            "resources.trainer")  # fmt: skip
    wrong_hook = pipeline_body(tiny_llama)
    wrong_hook["train"] = wrong_hook["train"] | {"hook": "blocks.2.hook_resid_post"}
    refused("/v1/pipelines", wrong_hook, "train.hook")
    refused("/v1/pipelines", pipeline_body(tiny_llama, stages=["harvest", "explode"]),
            "stages.1")  # fmt: skip
    refused("/v1/pipelines", pipeline_body(tiny_llama, train={"k": 0}),
            "train.architecture.k")  # fmt: skip
    judge = pipeline_body(tiny_llama, stages=["harvest", "train", "index", "explain"],
                          explain={"scorers": ["detection"]})  # fmt: skip
    refused("/v1/pipelines", judge, "explain.scorers")
    assert rows(app, Job) == 0


def test_sweep_cancel_and_resume(api, tiny_llama):
    """A sweep of two SAEs on the pipeline's set is cancelled mid-run; resubmitted, it
    resumes from its checkpoint, as `saefeat train` does after a crash."""
    app, client = api
    body = pipeline_body(tiny_llama, stages=["harvest"])
    job = app.state.job_runner.wait(client.post("/v1/pipelines", json=body).json()["job_id"],
                                    timeout=300)  # fmt: skip
    assert job.status == "succeeded", job.error
    set_id = client.get(f"/v1/jobs/{job.id}").json()["stages"][0]["job_id"]
    set_id = client.get(f"/v1/jobs/{set_id}").json()["activation_set"]
    one = {"activation_set": set_id, "hook": HOOK, "d_sae": 64, "batch_size": 64,
           "epochs": 300, "checkpoint_every_tokens": 64 * 10, "eval_ce_contexts": 0,
           "geometric_median_init": False}  # fmt: skip
    sweep = {"specs": [one | {"k": 4}, one | {"k": 8}], "device": "cpu"}
    r = client.post("/v1/trainings", json=sweep)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    home = app.state.settings.home

    deadline = time.monotonic() + 300
    while len(list((home / "train-state").glob("*/state.pt"))) < 2:
        assert time.monotonic() < deadline and client.get(f"/v1/jobs/{job_id}").json()[
            "status"] == "running"  # fmt: skip
        time.sleep(0.2)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = app.state.job_runner.wait(job_id, timeout=120)
    assert job.status == "cancelled"
    assert rows(app, SAE) == 0

    again = client.post("/v1/trainings", json=sweep).json()["job_id"]
    assert again != job_id
    done = app.state.job_runner.wait(again, timeout=600)
    assert done.status == "succeeded" and "resumed from checkpoint" in done.error, done.error
    assert rows(app, SAE) == 2
