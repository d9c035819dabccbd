"""Job claims and leases: one runner per job, orphans picked up, cancels across processes;
on SQLite and on PostgreSQL. Each JobRunner here stands for one API process."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from saefeat.storage.catalog.db import make_engine, make_sessionmaker
from saefeat.storage.catalog.models import Job, utcnow
from saefeat.workers.jobs import CANCEL_REQUESTED, LEASE_S, JobRunner


@pytest.fixture
def sessions(db_url):
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _add(sessions, job_id: str, status: str, lease_s: float | None = None, owner=None) -> None:
    lease = None if lease_s is None else utcnow() + timedelta(seconds=lease_s)
    with sessions() as s:
        s.add(Job(id=job_id, kind="harvest", spec={}, spec_hash=job_id, status=status,
                  owner=owner, lease_expires_at=lease))  # fmt: skip
        s.commit()


def test_one_claim_wins_and_an_expired_lease_is_free_again(sessions, settings):
    a, b = JobRunner(settings, sessions), JobRunner(settings, sessions)
    _add(sessions, "j1", "queued")
    assert a.claim("j1")
    assert not b.claim("j1")  # a holds it
    job = a.get("j1")
    assert (job.status, job.owner) == ("running", a.owner)
    assert job.lease_expires_at > utcnow() + timedelta(seconds=LEASE_S - 5)
    with sessions() as s:  # a died: nobody renewed its lease
        s.get(Job, "j1").lease_expires_at = utcnow() - timedelta(seconds=1)
        s.commit()
    assert b.claim("j1")
    assert b.get("j1").owner == b.owner
    a.shutdown()
    b.shutdown()


def test_runners_racing_for_one_job_claim_it_once(sessions, settings):
    _add(sessions, "j1", "queued")
    runners = [JobRunner(settings, sessions) for _ in range(6)]
    results, gate = [], threading.Barrier(len(runners))

    def race(runner):
        gate.wait()
        results.append(runner.claim("j1"))

    threads = [threading.Thread(target=race, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    for r in runners:
        r.shutdown()


def test_resume_picks_up_only_jobs_nobody_runs(sessions, settings, monkeypatch):
    _add(sessions, "queued", "queued")
    _add(sessions, "live", "running", lease_s=30, owner="other:1:a")
    _add(sessions, "dead", "running", lease_s=-1, owner="other:2:b")
    _add(sessions, "legacy", "running")  # running before leases existed
    _add(sessions, "done", "succeeded")
    runner = JobRunner(settings, sessions)
    started = []
    monkeypatch.setattr(runner, "start", started.append)
    assert sorted(runner.resume_pending()) == ["dead", "legacy", "queued"]
    assert sorted(started) == ["dead", "legacy", "queued"]


def test_heartbeat_renews_own_leases_and_carries_cancels(sessions, settings):
    a, b = JobRunner(settings, sessions), JobRunner(settings, sessions)
    _add(sessions, "j1", "queued")
    assert a.claim("j1")
    a._cancel["j1"] = threading.Event()  # what run() sets up for the harvest to poll
    with sessions() as s:
        s.get(Job, "j1").lease_expires_at = utcnow() + timedelta(seconds=2)
        s.commit()
    assert b.renew_leases() == 0  # not b's job
    assert a.renew_leases() == 1
    assert a.get("j1").lease_expires_at > utcnow() + timedelta(seconds=LEASE_S - 5)

    # b is another process: it cannot reach a's thread, so it writes the request down.
    job = b.cancel("j1")
    assert (job.status, job.error) == ("running", CANCEL_REQUESTED)
    assert not a._cancel["j1"].is_set()
    a.renew_leases()
    assert a._cancel["j1"].is_set()  # the harvest stops at its next shard
    a.shutdown()
    b.shutdown()


def test_cancel_of_a_job_nobody_runs_ends_it(sessions, settings):
    runner = JobRunner(settings, sessions)
    _add(sessions, "q", "queued")
    _add(sessions, "dead", "running", lease_s=-1, owner="other:2:b")
    for job_id in ("q", "dead"):
        job = runner.cancel(job_id)
        assert (job.status, job.lease_expires_at) == ("cancelled", None)
        assert not runner.claim(job_id)


def test_watch_picks_up_a_job_whose_runner_died(sessions, settings, monkeypatch):
    runner = JobRunner(settings, sessions)
    started = threading.Event()
    monkeypatch.setattr(runner, "start", lambda job_id: started.set())
    runner.watch(every=0.05)
    _add(sessions, "dead", "running", lease_s=-1, owner="other:2:b")
    assert started.wait(10)
    runner.shutdown()


def test_a_claimed_job_that_cannot_run_ends_failed(sessions, settings):
    """A spec that no longer validates fails the job instead of leaving it running under
    a lease the heartbeat would renew forever."""
    runner = JobRunner(settings, sessions)
    _add(sessions, "bad", "queued")  # spec {} is not a HarvestSpec
    with pytest.raises(Exception, match="validation error"):
        runner.run("bad")
    job = runner.get("bad")
    assert (job.status, job.lease_expires_at) == ("failed", None)
    runner.shutdown()


def test_latest_jobs_takes_the_newest_per_kind_and_hash(session):
    """The jobs page reads every pipeline's stages with one `latest_jobs` query: each
    (kind, hash) gets its newest job, the same as `latest_job` one pair at a time."""
    from saefeat.storage.catalog.job_store import latest_job, latest_jobs

    t0 = utcnow()
    rows = [("old", "train", "h1", 0), ("new", "train", "h1", 5), ("idx", "index", "h1", 9),
            ("other", "train", "h2", 1), ("unasked", "train", "h3", 2)]  # fmt: skip
    for job_id, kind, spec_hash, dt in rows:
        session.add(Job(id=job_id, kind=kind, spec={}, spec_hash=spec_hash,
                        created_at=t0 + timedelta(seconds=dt)))  # fmt: skip
    session.commit()
    keys = [("train", "h1"), ("index", "h1"), ("train", "h2"), ("index", "h2")]
    got = {key: job.id for key, job in latest_jobs(session, keys).items()}
    assert got == {("train", "h1"): "new", ("index", "h1"): "idx", ("train", "h2"): "other"}
    for key in keys:  # the batched read agrees with the single one
        one = latest_job(session, *key)
        assert got.get(key) == (one.id if one else None)
    assert latest_jobs(session, []) == {}
