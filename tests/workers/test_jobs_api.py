"""The job API on a real SQLite catalog and a real local Ray, through TestClient."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from saefeat.api.app import create_app
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import Job

PROBLEM = "application/problem+json"


@pytest.fixture
def api(settings, ray_session):
    app = create_app(settings)
    with app.state.sessionmaker() as s:
        admin = create_api_key(s, "admin", ["admin"])
        reader = create_api_key(s, "reader", ["read"])
        s.commit()
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {admin}"
        yield app, client, reader


def body(spec) -> dict:
    return spec.model_dump(mode="json")


def test_submit_replay_conflict_get_list(api, spec):
    app, client, reader = api
    r = client.post("/v1/harvests", json=body(spec), headers={"Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["location"] == r.headers["Location"] == f"/v1/jobs/{job_id}"
    # The same key and body replay the job; another body under that key is refused.
    again = client.post("/v1/harvests", json=body(spec), headers={"Idempotency-Key": "k1"})
    assert again.status_code == 202 and again.json()["job_id"] == job_id
    other = body(spec) | {"ctx_len": 32}
    bad = client.post("/v1/harvests", json=other, headers={"Idempotency-Key": "k1"})
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM
    assert "different body" in bad.json()["detail"]

    app.state.job_runner.wait(job_id, timeout=300)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["progress_done"] == job["progress_total"] == 20 * 16
    assert job["activation_set"] == spec.set_id() and job["eta_seconds"] == 0
    assert job["corpus_report"]["documents"] > 0
    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [job_id]
    # Cancelling a finished job is a conflict; unknown jobs are 404, both problem+json.
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
    missing = client.get("/v1/jobs/nope")
    assert missing.status_code == 404 and missing.headers["content-type"] == PROBLEM
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_auth_and_bad_bodies(api, spec):
    _, client, reader = api
    no_key = client.post("/v1/harvests", json=body(spec), headers={"Authorization": ""})
    assert no_key.status_code == 401
    weak = client.post(
        "/v1/harvests", json=body(spec), headers={"Authorization": f"Bearer {reader}"}
    )
    assert weak.status_code == 403
    bad = client.post("/v1/harvests", json=body(spec) | {"storage_dtype": "int8"})
    assert bad.status_code == 422 and "storage_dtype" in bad.json()["detail"]
    gone = client.post("/v1/harvests", json=body(spec) | {"corpus": ["/no/such/file.txt"]})
    assert gone.status_code == 422 and "does not exist" in gone.json()["detail"]


def test_cancel_then_resubmit_resumes(api, spec):
    app, client, _ = api
    job_id = client.post("/v1/harvests", json=body(spec)).json()["job_id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200
    job = app.state.job_runner.wait(job_id, timeout=300)
    assert job.status == "cancelled"
    again = client.post("/v1/harvests", json=body(spec)).json()["job_id"]
    assert again != job_id
    assert app.state.job_runner.wait(again, timeout=300).status == "succeeded"
    assert client.get("/v1/jobs").json()["items"][0]["id"] == again  # newest first


def test_jobs_left_running_are_resumed_on_start(settings, ray_session, spec):
    app = create_app(settings)
    with app.state.sessionmaker() as s:  # a job a dead API process left "running"
        s.add(Job(id="j-orphan", kind="harvest", spec=body(spec), spec_hash=spec.set_id(),
                  status="running", progress_done=64))  # fmt: skip
        s.commit()
    with TestClient(app) as client:
        job = app.state.job_runner.wait("j-orphan", timeout=300)
        assert job.status == "succeeded", job.error
        assert client.get("/v1/jobs/j-orphan").json()["progress_done"] == 20 * 16
