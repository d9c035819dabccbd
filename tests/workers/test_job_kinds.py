"""The runner is generic over job kinds: a kind registered here runs with leases,
cancel, shutdown hand-back and the resume limit, on a real SQLite catalog, no Ray."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from pydantic import BaseModel

from saefeat.storage.catalog.db import make_engine, make_sessionmaker, upgrade
from saefeat.storage.catalog.job_status import JobStatus
from saefeat.storage.catalog.models import Job, utcnow
from saefeat.workers.job_kinds import (
    JobKind,
    JobOutcome,
    JobStopped,
    Route,
    job_kind_names,
    register_job_kind,
)
from saefeat.workers.jobs import LEASE_LOST, SHUTDOWN, JobRunner


class WaitSpec(BaseModel):
    name: str
    stubborn: bool = False  # ignores should_stop, like a job stuck in a call


STARTED: dict[str, threading.Event] = {}
RELEASE = threading.Event()  # lets a stubborn run end when the test is done


def run_wait(spec: WaitSpec, *, settings, progress, should_stop) -> JobOutcome:
    """Counts to 1000 unless stopped first; the test stops it."""
    STARTED.setdefault(spec.name, threading.Event()).set()
    for i in range(1000):
        progress(i, 1000)
        if spec.stubborn:
            RELEASE.wait(30)
            break
        if should_stop():
            raise JobStopped("stopped")
        threading.Event().wait(0.05)
    return JobOutcome(JobStatus.SUCCEEDED, None, "done")


WAIT = register_job_kind(
    JobKind("test-wait", WaitSpec, run_wait, Route("/test-waits", "Wait"), "counts",
            spec_hash=lambda s: s.name)
)  # fmt: skip


@pytest.fixture
def sessions(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _started(name: str) -> threading.Event:
    return STARTED.setdefault(name, threading.Event())


def test_a_registered_kind_runs_joins_and_cancels(sessions, settings):
    assert {"harvest", "test-wait"} <= set(job_kind_names())
    runner = JobRunner(settings, sessions)
    job, created = runner.submit(WaitSpec(name="a"))
    assert created and job.kind == "test-wait" and job.spec_hash == "a"
    again, new = runner.submit(WaitSpec(name="a"))  # the active job of the same work
    assert again.id == job.id and not new
    runner.start(job.id)
    assert _started("a").wait(30)
    runner.cancel(job.id)
    done = runner.wait(job.id, timeout=30)
    assert done.status == "cancelled" and done.lease_expires_at is None
    assert [a["why"] for a in done.attempts] == ["cancelled: cancelled; resubmit to resume"]
    runner.shutdown()


def test_shutdown_hands_running_jobs_back(sessions, settings):
    runner = JobRunner(settings, sessions)
    polite, _ = runner.submit(WaitSpec(name="polite"))
    stuck, _ = runner.submit(WaitSpec(name="stuck", stubborn=True))
    for job in (polite, stuck):
        runner.start(job.id)
    assert _started("polite").wait(30) and _started("stuck").wait(30)
    runner.shutdown(timeout=1.0)  # the stubborn one does not stop in time
    for job in (polite, stuck):
        row = runner.get(job.id)
        assert (row.status, row.owner, row.lease_expires_at) == ("queued", None, None)
        assert row.attempts[-1]["why"] == SHUTDOWN and row.attempts[-1]["ended"]
    RELEASE.set()


def test_a_job_resumed_too_often_fails_with_its_history(sessions, settings):
    settings = settings.model_copy(update={"max_job_resumes": 2})
    runner = JobRunner(settings, sessions)
    old = utcnow() - timedelta(hours=1)
    when = old.isoformat()
    attempts = [{"owner": "host:1:a", "started": when, "ended": when, "why": SHUTDOWN},
                {"owner": "host:2:b", "started": when, "ended": None, "why": None}]  # fmt: skip
    with sessions() as s:  # a job whose second runner died holding it
        s.add(Job(id="j1", kind="test-wait", spec={"name": "j1"}, spec_hash="j1",
                  status="running", owner="host:2:b", lease_expires_at=old,
                  attempts=attempts))  # fmt: skip
        s.commit()
    assert runner.claim("j1")  # the second resume: allowed
    row = runner.get("j1")
    assert row.status == "running" and [a["why"] for a in row.attempts] == [
        SHUTDOWN, LEASE_LOST, None]  # fmt: skip
    with sessions() as s:  # and this runner dies too
        s.get(Job, "j1").lease_expires_at = old
        s.commit()
    assert not JobRunner(settings, sessions).claim("j1")  # the third: too many
    row = runner.get("j1")
    assert row.status == "failed" and row.lease_expires_at is None
    assert "more than 2 time(s)" in row.error
    assert "1. host:1:a" in row.error and SHUTDOWN in row.error and LEASE_LOST in row.error
    assert row.error.count(LEASE_LOST) == 2
    runner.shutdown()


def test_every_kind_has_a_route_a_cli_choice_a_remote_path_and_a_stage_field(settings):
    """The registry is the one list of kinds: the API's submit routes, `saefeat submit`'s
    commands, the remote client's paths and the pipeline's stages all come from it."""
    from typer.testing import CliRunner

    from saefeat.api.app import create_app
    from saefeat.cli import app as cli
    from saefeat.remote import submit_path
    from saefeat.specs import PipelineSpec
    from saefeat.workers.job_kinds import BUILTIN_KIND_MODULES, job_kinds

    builtin = [k for k in job_kinds().values() if k.run.__module__ in BUILTIN_KIND_MODULES]
    assert {k.name for k in builtin} >= {"harvest", "train", "index", "pipeline", "contrast",
                                         "explain"}  # fmt: skip
    paths = create_app(settings).openapi()["paths"]
    commands = CliRunner().invoke(cli, ["submit", "--help"], terminal_width=200).output
    for kind in builtin:
        route = paths.get("/v1" + kind.route.path, {}).get("post")
        assert route is not None, f"no POST route for {kind.name}"
        body = route["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.endswith("/" + (kind.route.body_type or kind.spec_type).__name__)
        assert f" {kind.name} " in commands, f"no `saefeat submit {kind.name}`"
        in_path = {field: "x" for field in kind.route.path_fields.values()}
        remote, rest = submit_path(kind.name, {**in_path, "other": 1})
        assert remote == "/v1" + kind.route.path.format(**dict.fromkeys(kind.route.path_fields,
                                                                        "x"))  # fmt: skip
        assert rest == {"other": 1}
        if kind.stage is not None:  # a stage's spec comes from the pipeline's own field
            assert kind.name in PipelineSpec.model_fields, kind.name


def test_busy_means_wait_in_line_first_come_first_served(sessions, settings):
    """Two run at once; the rest wait queued in the order they were started, each with
    its place, cancellable where it waits; as one ends the head of the line runs. The
    API shows the place too."""
    from fastapi.testclient import TestClient

    from saefeat.api.app import create_app
    from saefeat.storage.catalog.keys import create_api_key

    settings = settings.model_copy(update={"max_running_jobs": 2})
    runner = JobRunner(settings, sessions)
    names = ["line-a", "line-b", "line-c", "line-d", "line-e"]
    jobs = {n: runner.submit(WaitSpec(name=n))[0].id for n in names}
    for n in names:
        runner.start(jobs[n])
    assert _started("line-a").wait(30) and _started("line-b").wait(30)
    for n in ("line-c", "line-d", "line-e"):
        assert runner.get(jobs[n]).status == "queued"
        assert not _started(n).is_set()
    assert [runner.queue_position(jobs[n]) for n in names] == [None, None, 1, 2, 3]

    app = create_app(settings)
    app.state.job_runner = runner
    with app.state.sessionmaker() as s:
        key = create_api_key(s, "admin", ["admin"])
        s.commit()
    with TestClient(app) as client:
        app.state.job_runner = runner  # the lifespan made its own: this test's line
        client.headers["Authorization"] = f"Bearer {key}"
        shown = client.get(f"/v1/jobs/{jobs['line-d']}").json()
        assert (shown["status"], shown["queue_position"]) == ("queued", 2)
        assert client.get(f"/v1/jobs/{jobs['line-a']}").json()["queue_position"] is None

        # Cancelled where it waits: it ends at once, unrun, and the line closes up.
        cancelled = client.post(f"/v1/jobs/{jobs['line-d']}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert runner.get(jobs["line-d"]).error == "cancelled before it ran"
    assert [runner.queue_position(jobs[n]) for n in ("line-c", "line-e")] == [1, 2]

    runner.cancel(jobs["line-a"])  # room for one: the head of the line, not the last
    assert _started("line-c").wait(30)
    assert runner.get(jobs["line-c"]).status == "running"
    assert runner.get(jobs["line-e"]).status == "queued" and not _started("line-e").is_set()
    assert runner.queue_position(jobs["line-e"]) == 1
    for n in ("line-b", "line-c", "line-e"):
        runner.cancel(jobs[n])
    for n in names:
        assert runner.wait(jobs[n], timeout=30).status == "cancelled"
    assert not _started("line-d").is_set()
    runner.shutdown(timeout=5)


def test_the_line_is_fair_between_keys(sessions, settings):
    """One key's many jobs do not hold back another key's first: the line goes round
    the keys (each job's round: its key's jobs already waiting or running here)."""
    settings = settings.model_copy(update={"max_running_jobs": 1})
    runner = JobRunner(settings, sessions)
    ids = {n: runner.submit(WaitSpec(name=n))[0].id
           for n in ("fair-a1", "fair-a2", "fair-a3", "fair-b1", "fair-b2", "fair-c1")}  # fmt: skip
    runner.start(ids["fair-a1"], "key-a")
    assert _started("fair-a1").wait(30)
    for name, key in (("fair-a2", "key-a"), ("fair-a3", "key-a"), ("fair-b1", "key-b"),
                      ("fair-b2", "key-b"), ("fair-c1", None)):  # fmt: skip
        runner.start(ids[name], key)
    line = sorted((runner.queue_position(i), n) for n, i in ids.items()
                  if runner.queue_position(i) is not None)  # fmt: skip
    # Round 0: b1, c1 (a1 runs: a's round 0 is taken); round 1: a2, b2; round 2: a3.
    assert [n for _, n in line] == ["fair-b1", "fair-c1", "fair-a2", "fair-b2", "fair-a3"]
    runner.cancel(ids["fair-a1"])
    assert _started("fair-b1").wait(30)  # the head of the line, not a's next
    assert not _started("fair-a2").is_set()
    for n in ids:
        if runner.get(ids[n]).status != "cancelled":
            runner.cancel(ids[n])
    for n in ids:
        assert runner.wait(ids[n], timeout=30).status == "cancelled"
    runner.shutdown(timeout=5)
