"""The job API on a real SQLite catalog and a real local Ray, through TestClient."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from saefeat.api.app import create_app
from saefeat.errors import SpecError
from saefeat.specs import HarvestSpec
from saefeat.storage.catalog.keys import create_api_key
from saefeat.storage.catalog.models import Job

PROBLEM = "application/problem+json"


@pytest.fixture
def served(settings, tiny_llama):
    """The test settings (corpus root: tmp_path) with the tiny model allowed."""
    return settings.model_copy(update={"allowed_models": [str(tiny_llama)]})


@pytest.fixture
def api(served, ray_session):
    app = create_app(served)
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
    assert gone.status_code == 422 and "not a readable corpus" in gone.json()["detail"]


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


def test_jobs_left_running_are_resumed_on_start(served, ray_session, spec):
    app = create_app(served)
    with app.state.sessionmaker() as s:  # a job a dead API process left "running"
        s.add(Job(id="j-orphan", kind="harvest", spec=body(spec), spec_hash=spec.set_id(),
                  status="running", progress_done=64))  # fmt: skip
        s.commit()
    with TestClient(app) as client:
        job = app.state.job_runner.wait("j-orphan", timeout=300)
        assert job.status == "succeeded", job.error
        assert client.get("/v1/jobs/j-orphan").json()["progress_done"] == 20 * 16


def job_rows(app) -> int:
    with app.state.sessionmaker() as s:
        return s.scalar(select(func.count()).select_from(Job))


# Each case: (the spec fields, from the outside folder and the model cache; the field named)
BEYOND = [
    (lambda out, models: {"corpus": ["/etc/passwd"]}, "corpus.0.path"),
    (lambda out, models: {"corpus": ["/etc"]}, "corpus.0.path"),
    (lambda out, models: {"corpus": ["../../.."]}, "corpus.0.path"),
    (lambda out, models: {"corpus": ["builtin:python-docs", str(out)]}, "corpus.1.path"),
    (lambda out, models: {"corpus": ["missing.txt"]}, "corpus.0.path"),
    (lambda out, models: {"model": "/no/such/model"}, "model"),
    (lambda out, models: {"model": f"{models}/../{out.name}"}, "model"),
    (lambda out, models: {"model": str(out)}, "model"),
    (lambda out, models: {"device": "cuda:7"}, "device"),
    (lambda out, models: {"device": "tpu"}, "device"),
    (lambda out, models: {"device": "cpu", "workers": 64}, "workers"),
    (lambda out, models: {"ctx_len": 8192}, "ctx_len"),
    (lambda out, models: {"token_budget": 10**10}, "token_budget"),
    (lambda out, models: {"batch_size": 2048}, "batch_size"),
]


BEYOND_IDS = ["etc-passwd", "etc-folder", "dotdot", "folder-outside", "missing",
              "model-missing", "model-dotdot", "model-outside", "cuda-7", "tpu", "workers",
              "ctx_len", "token_budget", "batch_size"]  # fmt: skip


@pytest.mark.parametrize(("change", "field"), BEYOND, ids=BEYOND_IDS)
def test_specs_beyond_the_server_are_422_and_make_no_job(api, spec, tmp_path, change, field):
    app, client, _ = api
    outside = tmp_path.parent / f"{tmp_path.name}-outside"  # beside the corpus root
    outside.mkdir()
    (outside / "secret.txt").write_text("not for harvesting " * 100)
    r = client.post(
        "/v1/harvests", json=body(spec) | change(outside, app.state.settings.models_dir)
    )
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert r.json()["detail"].startswith(f"{field}: ")
    assert job_rows(app) == 0


def test_missing_and_forbidden_corpus_paths_answer_alike(api, spec):
    _, client, _ = api
    details = []
    for path in ["/etc/passwd", "/etc/no-such-file"]:
        r = client.post("/v1/harvests", json=body(spec) | {"corpus": [path]})
        details.append(r.json()["detail"].replace(path, "P"))
    assert details[0] == details[1]


def test_job_details_only_for_the_jobs_scope(api, spec):
    app, client, reader = api
    with app.state.sessionmaker() as s:
        jobs_key = create_api_key(s, "runner", ["jobs"])
        label_key = create_api_key(s, "labeller", ["label"])
        s.commit()
    job, _ = app.state.job_runner.submit(spec)  # a row only: nothing runs it here
    app.state.job_runner._update(job.id, error="failed reading /srv/private/notes.txt")

    def seen(key: str | None) -> tuple[dict, dict]:
        headers = {"Authorization": f"Bearer {key}" if key else ""}
        one = client.get(f"/v1/jobs/{job.id}", headers=headers)
        page = client.get("/v1/jobs", headers=headers)
        assert one.status_code == page.status_code == 200, (one.text, page.text)
        return one.json(), page.json()["items"][0]

    for key in (None, reader, label_key):
        for shown in seen(key):
            assert shown["id"] == job.id and shown["status"] == "queued"
            assert shown["detailed"] is False
            assert shown["spec"] is shown["error"] is shown["activation_set"] is None
            assert "/srv/private" not in str(shown)
    admin = client.headers["Authorization"].removeprefix("Bearer ")
    for key in (jobs_key, admin):
        for shown in seen(key):
            assert shown["detailed"] is True and shown["spec"] == body(spec)
            assert "/srv/private" in shown["error"] and shown["activation_set"] == spec.set_id()
    bad = client.get("/v1/jobs", headers={"Authorization": "Bearer sfk_nope"})
    assert bad.status_code == 401 and bad.headers["content-type"] == PROBLEM
    # Submitting and cancelling need `jobs`; `label` is not enough.
    for key, status in ((label_key, 403), (reader, 403), (jobs_key, 200)):
        r = client.post(f"/v1/jobs/{job.id}/cancel", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status, r.text
    weak = client.post(
        "/v1/harvests", json=body(spec), headers={"Authorization": f"Bearer {label_key}"}
    )
    assert weak.status_code == 403


def test_a_job_that_skipped_the_api_is_still_held_to_the_roots(api, spec):
    """A row written without the API's check (a CLI job the server resumes, a hand-made
    row) fails when the harvest opens the file, with the same answer."""
    app, client, _ = api
    runner = app.state.job_runner
    job, _ = runner.submit(HarvestSpec.model_validate(body(spec) | {"corpus": ["/etc/passwd"]}))
    with pytest.raises(SpecError, match="not a readable corpus under the corpus roots"):
        runner.run(job.id)
    failed = client.get(f"/v1/jobs/{job.id}").json()
    assert failed["status"] == "failed" and "not a readable corpus" in failed["error"]
    assert not list(app.state.settings.activations_dir.glob("*.zarr"))
